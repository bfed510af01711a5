"""N learner ranks (rl/learner.py) as one data-parallel group of Ray actors, which may span nodes.

Rank 0 opens the group's store on its own node's address (a port it bound itself, never all
interfaces); every rank joins it and builds its DeepSpeed engines. Ranks are placed by a placement
group with the job's strategy (SPREAD puts them on different nodes), or, with rl.colocate, one in
each rollout engine's bundle.
"""

from __future__ import annotations

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cai_ray.engines.pool import RESTART_WAIT_S
from cai_ray.rl.learner import Learner
from cai_ray.rl.spec import LearnerSpec
from cai_ray.train.spec import TrainSpec

LearnerActor = ray.remote(Learner)


class LearnerGroup:
    def __init__(self, policy: str, critic: str | None, spec: LearnerSpec, seed: int,
                 colocate_with=None, timeout_s: float = 600):
        """spec: every rank's LearnerSpec (rl/spec.py); colocate_with: an EnginePool built with
        room for one learner rank per bundle."""
        from cai_ray.platform import has_cuda, num_cores

        t = spec.train
        n = t.num_workers
        self.zero3 = t.zero_stage == 3
        spec = spec.with_threads(None if has_cuda() else max(1, num_cores() // n))
        self.pg = None if colocate_with is not None else self._placement_group(t, timeout_s)
        self.actors = [LearnerActor.options(**self._placement(r, t, colocate_with)).remote(
            policy, spec, critic_path=critic, rank=r, world=n, seed=seed) for r in range(n)]
        host, port = ray.get(self.actors[0].listen.remote(), timeout=timeout_s)
        joins = [a.join.remote(host, port) for a in self.actors]
        ready, _ = ray.wait(joins, num_returns=n, timeout=timeout_s)
        if len(ready) < n:
            self.shutdown()
            raise RuntimeError(f"RL learner: {n - len(ready)} of {n} learner rank(s) did not start "
                               f"in {timeout_s:.0f} s (each needs 1 CPU"
                               f"{' and a GPU' if t.use_gpu else ''}); the cluster has "
                               f"{ray.available_resources()} free. Give Ray more CPUs "
                               f"(ray.num_cpus) or use fewer engine actors / learner ranks")
        ray.get(ready, timeout=timeout_s)
        self.address = (host, port)
        self._next = 0

    @staticmethod
    def _bundle(t: TrainSpec) -> dict:
        return {"CPU": 1, **({"GPU": 1} if t.use_gpu else {})}

    def _placement_group(self, t: TrainSpec, timeout_s: float):
        pg = placement_group([self._bundle(t)] * t.num_workers,
                             strategy=t.placement_strategy, name="cai-ray-learners")
        ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
        if not ready:
            remove_placement_group(pg)
            raise RuntimeError(f"RL learner: cannot place {t.num_workers} rank(s) with "
                               f"{self._bundle(t)} each (strategy {t.placement_strategy}); "
                               f"the cluster has {ray.available_resources()} free")
        return pg

    def _placement(self, rank: int, t: TrainSpec, pool) -> dict:
        if pool is None:
            return {"num_cpus": 1, "num_gpus": 1 if t.use_gpu else 0,
                    "scheduling_strategy": PlacementGroupSchedulingStrategy(
                        self.pg, placement_group_bundle_index=rank)}
        gpus = pool.bundle.get("GPU", 0) / 2 if t.use_gpu else 0  # the engine has the rest
        return {"num_cpus": 1, "num_gpus": gpus, "scheduling_strategy": pool.bundle_strategy(rank)}

    def __len__(self) -> int:
        return len(self.actors)

    def call(self, method: str, *args, streaming: bool = False) -> list:
        """The method on every rank: a list of ObjectRefs (or ObjectRefGenerators)."""
        opts = {"num_returns": "streaming"} if streaming else {}
        return [getattr(a, method).options(**opts).remote(*args) for a in self.actors]

    def forward(self, method: str, *args):
        """A no-grad forward (logprobs, values) of one batch: on the next rank in turn, so scoring
        spreads over the group; under ZeRO-3 on every rank (the gather is collective), rank 0's
        result."""
        if self.zero3 and len(self.actors) > 1:
            return self.call(method, *args)[0]
        actor = self.actors[self._next % len(self.actors)]
        self._next += 1
        return getattr(actor, method).remote(*args)

    def train(self, exp, plans: list) -> list:
        """One train() per rank, each with its plan; the experience goes to the object store
        once."""
        ref = ray.put(exp)
        return [a.train.remote(ref, plan) for a, plan in zip(self.actors, plans)]

    def node_ids(self) -> list[str]:
        return ray.get([a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
                        for a in self.actors], timeout=RESTART_WAIT_S)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        if self.pg is not None:
            try:
                remove_placement_group(self.pg)
            except Exception:  # already gone with the cluster
                pass
