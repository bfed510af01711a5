"""Weight sync from the learner to the rollout engines: one interface, two paths.

ObjectStoreSync   the learner's policy as safetensors bytes in Ray's object store; every engine
                  loads them (works everywhere: CPU, several nodes).
NcclSync          a collective broadcast from learner rank 0 to the engines' GPU workers (not built
                  yet: it needs a GPU machine; see the class).
"""

from __future__ import annotations

import time

import ray


class ObjectStoreSync:
    name = "object_store"

    def __init__(self, pool):
        self.pool = pool

    def push(self, learner_state_ref) -> dict:
        """learner_state_ref: an ObjectRef of the bytes (learner.state_bytes.remote())."""
        t = time.time()
        self.pool.latest_weights = learner_state_ref  # restarted engines reload these
        refs = [a.load_weights.remote(learner_state_ref) for a in self.pool.actors]
        versions = [self._wait(i, ref, learner_state_ref) for i, ref in enumerate(refs)]
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


class NcclSync:
    """Broadcast over NCCL into vLLM's GPU workers. Not built yet: it needs a GPU machine to be
    written against and tested (vLLM's LLM.init_weight_transfer_engine / update_weights); until
    then asking for it fails clearly instead of silently using another path."""

    name = "nccl"

    def __init__(self, pool):
        raise NotImplementedError("ppo.weight_sync=nccl is not available yet; use object_store "
                                  "(works on CPU and GPU)")


def make_sync(kind: str, pool):
    return NcclSync(pool) if kind == "nccl" else ObjectStoreSync(pool)
