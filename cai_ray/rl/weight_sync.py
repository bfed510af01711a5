"""Weight sync from the learner to the rollout engines: one interface, two paths.

    sync = make_sync(cfg.weight_sync, pool)
    sync.push(learners)          # after each update; returns timing and the engines' version

ObjectStoreSync   the learner's policy as safetensors bytes in Ray's object store; every engine
                  loads them (works everywhere: CPU, several nodes).
CollectiveSync    a broadcast from learner rank 0 straight into the engines' model workers over a
                  torch.distributed group of its own (cai_ray.rl.collective): NCCL between GPUs
                  (`nccl`), or gloo between CPU processes (`gloo`, the same code, tested here).
                  An engine that dies breaks the group: that push falls back to the object store
                  and the group is formed again at the next one.
"""

from __future__ import annotations

import logging
import time

import ray

log = logging.getLogger(__name__)


class ObjectStoreSync:
    name = "object_store"

    def __init__(self, pool):
        self.pool = pool

    def push(self, learners) -> dict:
        t = time.time()
        weights = learners.all("state_bytes")[0]  # ObjectRef of one safetensors file's bytes
        self.pool.latest_weights = weights  # restarted engines reload these
        refs = [a.load_weights.remote(weights) for a in self.pool.actors]
        versions = [self._wait(i, ref, weights) for i, ref in enumerate(refs)]
        return {"timing/weight_sync_s": time.time() - t,
                "weights_version": max(v for v in versions if v is not None)}

    def _wait(self, i: int, ref, weights, tries: int = 3):
        """The engine's new weights version; an engine that dies meanwhile is waited for (Ray
        restarts it) and loaded again; one gone for good is skipped (None)."""
        from cai_ray.engines.pool import ACTOR_ERRORS

        actor = self.pool.actors[i]
        for _ in range(tries):
            try:
                return ray.get(ref)
            except ACTOR_ERRORS:
                try:
                    ray.get(actor.ping.remote())
                except ACTOR_ERRORS:
                    return None
                ref = actor.load_weights.remote(weights)
        return None


class CollectiveSync:
    """Learner rank 0 broadcasts; engines receive into their model workers. backend: nccl | gloo."""

    def __init__(self, pool, backend: str, *, tensor_parallel_size: int = 1,
                 timeout_s: float = 300):
        if backend == "nccl":
            from cai_ray.platform import has_cuda

            if not has_cuda():
                raise ValueError("ppo.weight_sync=nccl needs GPUs (engines and learner on CUDA); "
                                 "on CPUs use gloo (same path) or object_store")
        self.pool, self.backend, self.tp = pool, backend, tensor_parallel_size
        self.timeout_s = timeout_s
        self.meta = None
        self.joined = False
        self.fallback = ObjectStoreSync(pool)

    def _join(self, learners) -> None:
        host, port = ray.get(learners.all("sync_address", _single_node())[0])
        world = 1 + len(self.pool.actors) * self.tp
        refs = learners.all("sync_join", host, port, world, self.backend)
        refs += [a.join_sync.remote(host, port, 1 + i * self.tp, world, self.backend)
                 for i, a in enumerate(self.pool.actors)]
        ray.get(refs, timeout=self.timeout_s)
        if self.meta is None:
            self.meta = ray.get(learners.all("sync_meta")[0])
        self.joined = True

    def push(self, learners) -> dict:
        from cai_ray.engines.pool import ACTOR_ERRORS

        t = time.time()
        # restarted engines reload from the learner on demand (scheduler), not from stale bytes
        self.pool.latest_weights = lambda: learners.all("state_bytes")[0]
        try:
            if not self.joined:
                self._join(learners)
            sends = learners.all("sync_send", self.meta)
            recvs = [a.receive_weights.remote(self.meta) for a in self.pool.actors]
            versions = ray.get(recvs, timeout=self.timeout_s)
            sent = ray.get(sends[0], timeout=self.timeout_s)
        except (ray.exceptions.GetTimeoutError, *ACTOR_ERRORS) as exc:
            log.warning("weight sync over %s failed (%s); this push goes through the object "
                        "store and the group is formed again next time", self.backend,
                        type(exc).__name__)
            self._leave(learners)
            out = self.fallback.push(learners)
            return {**out, "weight_sync/fallback": 1, "timing/weight_sync_s": time.time() - t}
        return {"timing/weight_sync_s": time.time() - t, "weights_version": max(versions),
                "weight_sync/bytes": sent, "weight_sync/fallback": 0}

    def _leave(self, learners) -> None:
        self.joined = False
        for ref in learners.all("sync_leave") + [a.leave_sync.remote() for a in self.pool.actors]:
            try:
                ray.get(ref, timeout=30)
            except Exception:  # a dead or hung member: the group is dropped anyway
                pass


def _single_node() -> bool:
    return len([n for n in ray.nodes() if n.get("Alive")]) <= 1


def make_sync(kind: str, pool):
    if kind in ("nccl", "gloo"):
        return CollectiveSync(pool, kind,
                              tensor_parallel_size=getattr(pool, "tensor_parallel_size", 1))
    return ObjectStoreSync(pool)
