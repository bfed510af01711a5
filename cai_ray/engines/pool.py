"""Engine actors: a thin Ray shell over Engine, a pool of them in a placement group, and a streaming
scheduler that keeps every actor busy with bounded work in flight.

    pool = EnginePool(2, "vllm", model_path, num_cpus=1)
    sched = pool.scheduler(Sampling(max_tokens=64))
    for key in prompts: sched.put(key, Request(key, messages=...))
    for key, completions in sched.results():   # as each batch returns (ray.wait), no barrier
        if needs_more(key): sched.put(key, next_request(key, completions))

A batch whose actor dies is put back in the queue and runs on another actor (or on the same one
once Ray restarts it), so every key is answered exactly once. An actor that hangs (its running batch
past its deadline: `call_timeout_s`, or sized from the batch's token budget and the pool's measured
speed) is killed and handled the same way: Ray restarts it, it gets the current weights again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cai_ray.engines.base import account
from cai_ray.engines.factory import engine_kwargs, make_engine
from cai_ray.generation import Completion, Request, Sampling
from cai_ray.platform import core_ranges, has_cuda
from cai_ray.rundir.nodeview import on_node

log = logging.getLogger(__name__)
ACTOR_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)
RESTART_WAIT_S = 600  # how long a restarting actor (ActorUnavailableError) is waited for
MIN_TOKENS_PER_S = 4.0
"""The slowest generation an actor may show before its batch counts as hung, until the pool has
measured its own speed (then a fifth of that, never below this)."""
SCORE_TOKENS = 16  # the budget of one scoring request (a forward pass, no generation)
WATCH_EVERY_S = 2.0  # how often in-flight batches are checked against their deadlines


def alive(actor, timeout_s: float = RESTART_WAIT_S, died_for_s: float = 5.0) -> bool:
    """Whether the actor answers, waiting while Ray restarts it (calls then raise
    ActorUnavailableError, which is temporary). A call made just after the process died, before
    Ray knew, can fail as if the actor were dead; only an actor that keeps failing that way for
    died_for_s is taken as dead for good."""
    deadline = time.time() + timeout_s
    died_since = None
    while True:
        try:
            return ray.get(actor.ping.remote(), timeout=max(1.0, deadline - time.time()))
        except ActorUnavailableError:
            died_since = None
        except RayActorError:
            died_since = died_since or time.time()
            if time.time() - died_since > died_for_s:
                return False
        except ray.exceptions.GetTimeoutError:
            return False
        if time.time() > deadline:
            return False
        time.sleep(0.5)


class EngineWorker:
    """What an engine actor holds: one Engine, its methods, nothing else."""

    def __init__(self, backend: str, model_path: str, kwargs: dict):
        # a model of the run (sft/model, ...) on this node, pulled from the run's storage if needed
        self.engine = make_engine(backend, on_node(model_path), **kwargs)

    def generate(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        return self.engine.generate(requests, sampling)

    def score(self, requests: list[Request], continuations: list[str]) -> list[list[float]]:
        return self.engine.score(requests, continuations)

    def token_logprobs(self, pairs):
        return self.engine.token_logprobs(pairs)

    def next_token_logprobs(self, requests: list[Request], token_ids: list[int]):
        return self.engine.next_token_logprobs(requests, token_ids)

    def load_weights(self, source) -> int:
        return self.engine.load_weights(on_node(source) if isinstance(source, str) else source)

    def load_adapter(self, payload, base: str) -> int:
        """payload: the adapter's bytes, or an ObjectRef of them (fetched here)."""
        if isinstance(payload, ray.ObjectRef):
            payload = ray.get(payload)
        return self.engine.load_adapter(payload, on_node(base))

    def load_weight_refs(self, refs: list) -> int:
        """Weights as a list of ObjectRefs of safetensors buckets (the learner's stream), each
        fetched when the loader reaches it."""
        return self.engine.load_buckets(ray.get(r) for r in refs)

    def join_sync(self, host: str, port: int, rank: int, world: int, backend: str) -> bool:
        self.in_sync = self.engine.join_sync(host, port, rank, world, backend)
        return self.in_sync

    def in_sync_group(self) -> bool:
        """False in an engine Ray restarted since the group formed (a fresh process)."""
        return getattr(self, "in_sync", False)

    def receive_weights(self, meta, bucket_mb: float = 64) -> int:
        return self.engine.receive_weights(meta, bucket_mb)

    def leave_sync(self) -> None:
        self.in_sync = False
        self.engine.leave_sync()

    def info(self) -> dict:
        return self.engine.info()

    def ping(self) -> bool:
        return True


EngineActor = ray.remote(EngineWorker)


class EnginePool:
    def __init__(self, num_actors: int, backend: str, model_path: str, *, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, strategy: str = "PACK", max_restarts: int = 1,
                 engine_kwargs: dict | None = None, name: str = "engine",
                 resources: dict | None = None, shared: dict | None = None, wait: bool = True,
                 call_timeout_s: float | None = None, timeout_floor_s: float = 120.0):
        """shared: resources added to every bundle for roles co-located with the engines (RL's
        learner ranks); on GPUs the engine then takes half of its bundle's GPUs. wait=False
        returns once the actors are placed, while they still load the model: call ready()
        before the first request (other roles start meanwhile). call_timeout_s: the longest one
        batch may run before its actor is taken as hung; None sizes it from the batch
        (timeout_floor_s + its token budget at the pool's measured speed)."""
        self.backend, self.model_path, self.name = backend, model_path, name
        self.call_timeout_s, self.timeout_floor_s = call_timeout_s, timeout_floor_s
        self.measured = {"tokens": 0.0, "busy_s": 0.0}  # completed batches, for sized deadlines
        self.latest_weights = None  # the newest weights (RL): ObjectRefs of their safetensors
        # buckets, or a function that returns them; a restarted actor reloads them before it
        # takes work again
        self.tensor_parallel_size = (engine_kwargs or {}).get("tensor_parallel_size", 1)
        bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {}), **(resources or {})}
        if shared:
            bundle = {k: bundle.get(k, 0) + shared.get(k, 0) for k in {*bundle, *shared}}
            num_gpus = num_gpus / 2 if num_gpus else 0.0
        self.bundle = bundle
        self.pg = placement_group([dict(bundle) for _ in range(num_actors)], strategy=strategy,
                                  name=f"cai-ray-{name}")
        ready, _ = ray.wait([self.pg.ready()], timeout=600)
        if not ready:
            remove_placement_group(self.pg)
            raise RuntimeError(f"{name}: could not place {num_actors} engine actor(s) with "
                               f"{bundle} each (strategy {strategy}); the cluster has "
                               f"{ray.available_resources()}")
        cores = core_ranges(num_actors) if not has_cuda() and num_gpus == 0 else [None] * num_actors
        self.actors = []
        for i in range(num_actors):
            kwargs = dict(engine_kwargs or {}, cpu_cores=cores[i])
            actor = EngineActor.options(
                num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
                max_task_retries=0, max_concurrency=1, name=None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.pg, placement_group_bundle_index=i),
            ).remote(backend, model_path, kwargs)
            self.actors.append(actor)
        self._t0, self.startup_s = time.time(), None
        self._starting = [a.ping.remote() for a in self.actors]
        if wait:
            self.ready()

    @classmethod
    def from_cfg(cls, engine, model, model_path: str, *, seed: int = 0, name: str = "engine",
                 num_actors: int | None = None, shared: dict | None = None,
                 wait: bool = True) -> "EnginePool":
        """Engine actors for a model on an EngineCfg's resources, with a ModelCfg's settings."""
        return cls(num_actors or engine.num_actors, engine.backend, model_path,
                   num_cpus=engine.num_cpus_per_actor, num_gpus=engine.num_gpus_per_actor,
                   strategy=engine.placement_strategy, max_restarts=engine.max_restarts,
                   engine_kwargs=engine_kwargs(engine, model, seed), name=name, shared=shared,
                   wait=wait, call_timeout_s=engine.call_timeout_s,
                   timeout_floor_s=engine.timeout_floor_s)

    def ready(self) -> "EnginePool":
        """Wait until every actor has loaded its model (once; later calls return at once)."""
        if self._starting:
            try:
                ray.get(self._starting, timeout=RESTART_WAIT_S)
            except ray.exceptions.GetTimeoutError:
                self.shutdown()
                raise RuntimeError(f"{self.name}: the engine actors did not load {self.model_path} "
                                   f"within {RESTART_WAIT_S} s; see their logs (ray logs, "
                                   f"/tmp/ray/session_latest/logs)") from None
            self._starting, self.startup_s = [], time.time() - self._t0
        return self

    def __len__(self) -> int:
        return len(self.actors)

    def bundle_strategy(self, i: int) -> PlacementGroupSchedulingStrategy:
        """Schedule another role into bundle i of this pool (co-location)."""
        return PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i)

    def scheduler(self, sampling: Sampling, batch_size: int = 16,
                  max_in_flight: int = 2) -> "Scheduler":
        """Streams generate() calls; each result is a list of Completions."""
        return Scheduler(self, "generate", (sampling,), batch_size, max_in_flight)

    def score_scheduler(self, token_ids: list[int], batch_size: int = 16,
                        max_in_flight: int = 2) -> "Scheduler":
        """Streams next_token_logprobs() calls; each result is one log-probability per token."""
        return Scheduler(self, "next_token_logprobs", (token_ids,), batch_size, max_in_flight)

    def call_all(self, method: str, *args) -> list[Any]:
        """Run one method on every live actor (e.g. load_weights) and wait for all, at most
        call_timeout_s (default RESTART_WAIT_S): a hung actor fails the call with a report."""
        timeout = self.call_timeout_s or RESTART_WAIT_S
        try:
            return ray.get([getattr(a, method).remote(*args) for a in self.actors],
                           timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"{self.name}: {method} did not return from every engine actor "
                               f"within {timeout:.0f} s (engine.call_timeout_s)") from None

    def node_ids(self) -> list[str]:
        """The Ray node each actor runs on (placement checks)."""
        return ray.get([_node_of.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            self.pg, placement_group_bundle_index=i), num_cpus=0).remote()
            for i in range(len(self.actors))])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        try:
            remove_placement_group(self.pg)
        except Exception:  # already gone with the cluster
            pass


@ray.remote
def _node_of() -> str:
    return ray.get_runtime_context().get_node_id()


@dataclass
class _Batch:
    actor: int
    items: list[tuple[Hashable, Request]]
    budget: float = 0.0  # tokens this batch may take (requests x max_tokens x n)
    started: float = field(default_factory=time.time)


class Scheduler:
    """Streams requests through the pool: at most `max_in_flight` batches per actor; results come
    back in completion order; failed batches are retried on another live actor; an actor whose
    running batch passes its deadline is killed (then restarted by Ray) and its batches retried."""

    def __init__(self, pool: EnginePool, method: str, args: tuple, batch_size: int,
                 max_in_flight: int):
        self.pool, self.method, self.args = pool, method, args
        self.batch_size, self.max_in_flight = batch_size, max_in_flight
        self.queue: deque[tuple[Hashable, Request]] = deque()
        self.inflight: dict[ray.ObjectRef, _Batch] = {}
        self.dead: set[int] = set()
        self.suspect: dict[ray.ObjectRef, int] = {}  # ping refs of actors that just failed
        self.first_failure: dict[int, float] = {}  # since when a restarting actor is waited for
        self.last_done: dict[int, float] = {}  # when each actor last returned a batch
        self.killed: set[int] = set()  # hung actors killed, whose batches have not failed yet
        self.watched = time.time()  # when in-flight batches were last checked for hangs
        sampling = args[0] if args and isinstance(args[0], Sampling) else None
        self.per_request = (sampling.max_tokens * sampling.n) if sampling else SCORE_TOKENS
        self.stats = {"batches": 0, "retried_batches": 0, "actor_failures": 0,
                      "hung_actors": 0, "generated_tokens": 0, "prompt_tokens": 0, "requests": 0}

    def put(self, key: Hashable, request: Request) -> None:
        self.queue.append((key, request))

    def _load(self, i: int) -> int:
        return sum(1 for b in self.inflight.values() if b.actor == i)

    def _fill(self) -> None:
        busy = set(self.suspect.values()) | self.dead | self.killed
        for i, actor in enumerate(self.pool.actors):
            while i not in busy and self.queue and self._load(i) < self.max_in_flight:
                n = min(self.batch_size, max(1, -(-len(self.queue) // self._live())))
                items = [self.queue.popleft() for _ in range(min(n, len(self.queue)))]
                ref = getattr(actor, self.method).remote([r for _, r in items], *self.args)
                self.inflight[ref] = _Batch(i, items, budget=len(items) * self.per_request)

    def _live(self) -> int:
        return max(1, len(self.pool.actors) - len(self.dead) - len(set(self.suspect.values())))

    def results(self) -> Iterator[tuple[Hashable, list[Completion]]]:
        while self.queue or self.inflight or self.suspect:
            self._fill()
            if len(self.dead) == len(self.pool.actors):
                raise RuntimeError(f"{self.pool.name}: every engine actor has died")
            refs = list(self.inflight) + list(self.suspect)
            done, _ = ray.wait(refs, num_returns=1, timeout=WATCH_EVERY_S)
            if time.time() - self.watched >= WATCH_EVERY_S:  # also while others keep answering
                self._watch()
            if not done:
                continue
            ref = done[0]
            if ref in self.suspect:
                self._check_suspect(ref)
                continue
            batch = self.inflight.pop(ref)
            try:
                outs = ray.get(ref)
            except ACTOR_ERRORS as exc:
                self._on_failure(batch, exc)
                continue
            self._measure(batch)
            self.stats["batches"] += 1
            for (key, _), out in zip(batch.items, outs):
                account(self.stats, out)
                yield key, out

    # -- hangs ---------------------------------------------------------------------------------
    def _running_since(self, batch: _Batch) -> float:
        """An actor runs one call at a time: a batch starts when it was sent or when the actor
        returned the one before it, whichever is later."""
        return max(batch.started, self.last_done.get(batch.actor, 0.0))

    def deadline_s(self, batch: _Batch) -> float:
        """How long this batch may run: call_timeout_s, or the floor plus its token budget at a
        fifth of the speed the pool has shown (at least MIN_TOKENS_PER_S)."""
        if self.pool.call_timeout_s:
            return self.pool.call_timeout_s
        m = self.pool.measured
        speed = m["tokens"] / m["busy_s"] if m["busy_s"] > 0 else 0.0
        return self.pool.timeout_floor_s + batch.budget / max(MIN_TOKENS_PER_S, 0.2 * speed)

    def _measure(self, batch: _Batch) -> None:
        now = time.time()
        self.pool.measured["busy_s"] += now - self._running_since(batch)
        self.pool.measured["tokens"] += batch.budget
        self.last_done[batch.actor] = now

    def _watch(self) -> None:
        """Kill each actor whose oldest batch has run past its deadline; its batches then fail
        and come back through ray.wait like a dead actor's (retried, actor restarted, weights
        re-sent)."""
        now = self.watched = time.time()
        oldest: dict[int, _Batch] = {}
        for b in self.inflight.values():
            if b.actor not in oldest or b.started < oldest[b.actor].started:
                oldest[b.actor] = b
        for i, b in oldest.items():
            ran = now - self._running_since(b)
            if i in self.killed or ran <= self.deadline_s(b):
                continue
            log.warning("%s: actor %d has run one batch of %d request(s) for %.0f s (deadline "
                        "%.0f s): taken as hung, killed, its work retried", self.pool.name, i,
                        len(b.items), ran, self.deadline_s(b))
            self.stats["hung_actors"] += 1
            self.killed.add(i)
            ray.kill(self.pool.actors[i], no_restart=False)

    def _on_failure(self, batch: _Batch, exc: Exception) -> None:
        log.warning("%s: actor %d failed (%s); retrying %d request(s)", self.pool.name,
                    batch.actor, type(exc).__name__, len(batch.items))
        self.stats["actor_failures"] += 1
        self.stats["retried_batches"] += 1
        self.killed.discard(batch.actor)
        self.last_done.pop(batch.actor, None)
        self.queue.extendleft(reversed(batch.items))
        # Other batches on the same actor fail too; they come back through ray.wait.
        if batch.actor not in self.suspect.values() and batch.actor not in self.dead:
            self.suspect[self.pool.actors[batch.actor].ping.remote()] = batch.actor

    def _check_suspect(self, ref) -> None:
        i = self.suspect.pop(ref)
        try:
            ray.get(ref)  # returns once Ray has restarted the actor
        except ActorUnavailableError:  # still restarting: ask again shortly
            if time.time() - self.first_failure.setdefault(i, time.time()) < RESTART_WAIT_S:
                time.sleep(0.5)
                self.suspect[self.pool.actors[i].ping.remote()] = i
                return
            return self._gone(i)
        except ACTOR_ERRORS:
            return self._gone(i)
        self.first_failure.pop(i, None)
        try:
            weights = self.pool.latest_weights
            if hasattr(weights, "reload"):  # an adapter: the actor merges it again
                ray.get(weights.reload(self.pool.actors[i]),
                        timeout=self.pool.call_timeout_s or RESTART_WAIT_S)
                weights = None
            if callable(weights):  # collective sync: ask the learner for its current weights
                weights = weights()
            if weights is not None:
                ray.get(self.pool.actors[i].load_weight_refs.remote(list(weights)),
                        timeout=self.pool.call_timeout_s or RESTART_WAIT_S)
        except ACTOR_ERRORS:  # died again while loading: it fails its next batch, and so on
            pass
        except ray.exceptions.GetTimeoutError:  # hung while loading: killed, and waited for again
            log.warning("%s: actor %d hung reloading weights; killed", self.pool.name, i)
            ray.kill(self.pool.actors[i], no_restart=False)
            self.suspect[self.pool.actors[i].ping.remote()] = i
            return
        log.warning("%s: actor %d is back", self.pool.name, i)

    def _gone(self, i: int) -> None:
        log.warning("%s: actor %d is gone for good", self.pool.name, i)
        self.dead.add(i)
