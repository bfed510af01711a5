"""Weight sync from the learner to the rollout engines: one interface, streamed in buckets
(rl.weight_sync_bucket_mb) so neither side holds a second copy of the whole model.

    sync = make_sync(cfg.weight_sync, pool, bucket_mb)
    sync.push(learners)          # after each update; timing, bytes and the engines' version

ObjectStoreSync   learner rank 0 streams safetensors buckets into Ray's object store; every
                  engine loads them bucket by bucket (CPU, several nodes, any engine).
AdapterSync       a LoRA policy: only the adapter travels; each engine merges it into the base
                  weights (cai_ray/engines/adapter.py).
CollectiveSync    a broadcast from learner rank 0 into the engines' model workers over a
                  torch.distributed group of its own (engines/collective.py): NCCL between GPUs,
                  gloo between CPU processes. An engine that dies breaks the group: that push
                  goes through the object store and the group is formed again at the next.
"""

from __future__ import annotations

import logging
import time
from math import prod

import ray
import torch

from cai_ray.engines.pool import ACTOR_ERRORS, alive

log = logging.getLogger(__name__)


def state_bytes(meta) -> int:
    return sum(prod(shape) * torch.empty(0, dtype=getattr(torch, dtype)).element_size()
               for _, shape, dtype in meta)


class ObjectStoreSync:
    name = "object_store"

    def __init__(self, pool, bucket_mb: float = 64, timeout_s: float = 600):
        self.pool, self.bucket_mb, self.timeout_s = pool, bucket_mb, timeout_s
        self.meta = None

    def publish(self, learners) -> list:
        """The learner's current policy as ObjectRefs of its buckets, in order."""
        if self.meta is None:
            self.meta = ray.get(learners.call("weight_meta")[0], timeout=self.timeout_s)
        gens = learners.call("weight_buckets", self.meta, self.bucket_mb, streaming=True)
        refs = list(gens[0])
        ray.get(refs, timeout=self.timeout_s)  # produced (errors surface here, not in engines)
        return refs

    def push(self, learners) -> dict:
        t = time.time()
        refs = self.publish(learners)
        self.pool.latest_weights = refs  # restarted engines reload these
        loads = [a.load_weight_refs.remote(refs) for a in self.pool.actors]
        self.restarted = 0
        versions = [self._wait(i, ref, refs) for i, ref in enumerate(loads)]
        return {"timing/weight_sync_s": time.time() - t,
                "weights_version": max(v for v in versions if v is not None),
                "weight_sync/bytes": state_bytes(self.meta), "weight_sync/buckets": len(refs),
                "weight_sync/engines_restarted": self.restarted}

    def _wait(self, i: int, ref, refs, tries: int = 3):
        """The engine's new weights version; an engine that dies meanwhile is waited for (Ray
        restarts it) and loaded again; one gone for good is skipped (None)."""
        actor = self.pool.actors[i]
        for _ in range(tries):
            try:
                return ray.get(ref, timeout=self.timeout_s)
            except ACTOR_ERRORS:
                if not alive(actor):  # waits while Ray restarts it
                    return None
                self.restarted += 1
                ref = actor.load_weight_refs.remote(refs)
        return None


class AdapterSync:
    """A LoRA policy: learner rank 0 sends only the adapter (A and B of each adapted module, a few
    percent of the model) through the object store, and every engine merges it into the base model's
    weights itself (cai_ray/engines/adapter.py merged_pairs). Used whatever rl.weight_sync says."""

    name = "adapter"

    def __init__(self, pool, base: str, full_bytes: int | None = None, timeout_s: float = 600):
        self.pool, self.base, self.timeout_s = pool, base, timeout_s
        self.full_bytes = full_bytes

    def reload(self, actor):
        """A restarted engine merges the newest adapter again (EnginePool's scheduler)."""
        return actor.load_adapter.remote(self.ref, self.base)

    def push(self, learners) -> dict:
        t = time.time()
        payload = ray.get(learners.call("adapter_payload"), timeout=self.timeout_s)[0]
        self.ref = ray.put(payload)
        self.pool.latest_weights = self
        self.restarted = 0
        versions = []
        for a in self.pool.actors:
            try:
                versions.append(ray.get(a.load_adapter.remote(self.ref, self.base),
                                        timeout=self.timeout_s))
            except ACTOR_ERRORS:
                if alive(a):  # restarted: the scheduler's reload merges it; count it
                    self.restarted += 1
        out = {"timing/weight_sync_s": time.time() - t,
               "weights_version": max(versions) if versions else None,
               "weight_sync/bytes": len(payload), "weight_sync/engines_restarted": self.restarted}
        if self.full_bytes:
            out["weight_sync/share_of_model"] = len(payload) / self.full_bytes
        return out


class EnginesGone(RuntimeError):
    """An engine is dead for good (out of restarts): pushes go through the object store."""


class CollectiveSync:
    """Learner rank 0 broadcasts; engines receive into their model workers. backend: nccl | gloo."""

    def __init__(self, pool, backend: str, *, tensor_parallel_size: int = 1,
                 bucket_mb: float = 64, timeout_s: float = 300):
        if backend == "nccl":
            from cai_ray.platform import has_cuda

            if not has_cuda():
                raise ValueError("rl.weight_sync=nccl needs GPUs (engines and learner on CUDA); "
                                 "on CPUs use gloo (same path) or object_store")
        self.pool, self.backend, self.tp = pool, backend, tensor_parallel_size
        self.bucket_mb, self.timeout_s = bucket_mb, timeout_s
        self.joined = False
        self.fallback = ObjectStoreSync(pool, bucket_mb, timeout_s)

    @property
    def meta(self):
        return self.fallback.meta

    def _join(self, learners) -> None:
        host, port = ray.get(learners.call("sync_address", _single_node())[0],
                             timeout=self.timeout_s)
        world = 1 + len(self.pool.actors) * self.tp
        refs = learners.call("sync_join", host, port, world, self.backend)
        refs += [a.join_sync.remote(host, port, 1 + i * self.tp, world, self.backend)
                 for i, a in enumerate(self.pool.actors)]
        ray.get(refs, timeout=self.timeout_s)  # fails as soon as any member fails
        if self.fallback.meta is None:
            self.fallback.meta = ray.get(learners.call("weight_meta")[0], timeout=self.timeout_s)
        self.joined = True

    def _members(self, learners) -> None:
        """Form the group if there is none, or again if an engine was restarted since (its
        fresh process holds no group, and a broadcast would wait for it). Every engine must
        answer first (one that Ray is restarting is waited for): a group only forms whole."""
        gone = [i for i, a in enumerate(self.pool.actors) if not alive(a, self.timeout_s)]
        if gone:
            raise EnginesGone(f"engine(s) {gone} gone for good: the group cannot form")
        if self.joined:
            held = ray.get([a.in_sync_group.remote() for a in self.pool.actors],
                           timeout=self.timeout_s)
            if all(held):
                return
            self.restarted = held.count(False)
            log.info("an engine was restarted since the weight-sync group formed: forming it "
                     "again")
            self._leave(learners)
        self._join(learners)

    def push(self, learners) -> dict:
        t = time.time()
        # restarted engines reload from the learner on demand (scheduler), not from stale bytes
        self.pool.latest_weights = lambda: self.fallback.publish(learners)
        self.restarted = 0
        try:
            self._members(learners)
            sends = learners.call("sync_send", self.meta, self.bucket_mb)
            recvs = [a.receive_weights.remote(self.meta, self.bucket_mb)
                     for a in self.pool.actors]
            *versions, sent = ray.get(recvs + sends[:1], timeout=self.timeout_s)
        except (ray.exceptions.RayError, EnginesGone) as exc:  # dead engine, broken pair, timeout
            log.warning("weight sync over %s failed (%s: %s); this push goes through the "
                        "object store and the group is formed again next time", self.backend,
                        type(exc).__name__, str(exc).splitlines()[0][:200])
            self._leave(learners)
            out = self.fallback.push(learners)
            return {**out, "weight_sync/fallback": 1, "timing/weight_sync_s": time.time() - t}
        return {"timing/weight_sync_s": time.time() - t, "weights_version": max(versions),
                "weight_sync/bytes": sent, "weight_sync/fallback": 0,
                "weight_sync/engines_restarted": self.restarted}

    def _leave(self, learners) -> None:
        self.joined = False
        for ref in learners.call("sync_leave") + [a.leave_sync.remote() for a in self.pool.actors]:
            try:
                ray.get(ref, timeout=30)
            except Exception:  # a dead or hung member: the group is dropped anyway
                pass


def model_bytes(folder: str) -> int:
    """Bytes of a model folder's weights (the denominator of an adapter sync's share)."""
    from pathlib import Path

    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def _single_node() -> bool:
    return len([n for n in ray.nodes() if n.get("Alive")]) <= 1


def make_sync(kind: str, pool, bucket_mb: float = 64, timeout_s: float = 600,
              lora_base: str | None = None):
    """lora_base: the policy trains LoRA adapters on this base model: AdapterSync."""
    if lora_base:
        return AdapterSync(pool, lora_base, model_bytes(lora_base), timeout_s)
    if kind in ("nccl", "gloo"):
        return CollectiveSync(pool, kind, bucket_mb=bucket_mb,
                              tensor_parallel_size=getattr(pool, "tensor_parallel_size", 1))
    return ObjectStoreSync(pool, bucket_mb, timeout_s)
