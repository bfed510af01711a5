"""An in-process stand-in for EnginePool: the same scheduler interface over one Engine, no Ray.
For debugging a stage in a notebook and for tests of a stage's logic with a real engine."""

from __future__ import annotations

from collections import deque
from typing import Hashable, Iterator

from cai_ray.engines.base import Engine, account
from cai_ray.generation import Completion, Request, Sampling


class LocalPool:
    name = "local"

    def __init__(self, engine: Engine):
        self.engine = engine
        self.actors = [engine]

    def __len__(self) -> int:
        return 1

    def scheduler(self, sampling: Sampling, batch_size: int = 16,
                  max_in_flight: int = 1) -> "LocalScheduler":
        return LocalScheduler(lambda reqs: self.engine.generate(reqs, sampling), batch_size)

    def score_scheduler(self, token_ids: list[int], batch_size: int = 16,
                        max_in_flight: int = 1) -> "LocalScheduler":
        return LocalScheduler(lambda reqs: self.engine.next_token_logprobs(reqs, token_ids),
                              batch_size)

    def call_all(self, method: str, *args):
        return [getattr(self.engine, method)(*args)]

    def shutdown(self) -> None:
        pass


class LocalScheduler:
    def __init__(self, call, batch_size: int):
        self.call, self.batch_size = call, batch_size
        self.queue: deque[tuple[Hashable, Request]] = deque()
        self.stats = {"batches": 0, "retried_batches": 0, "actor_failures": 0,
                      "generated_tokens": 0, "prompt_tokens": 0, "requests": 0}

    def put(self, key: Hashable, request: Request) -> None:
        self.queue.append((key, request))

    def results(self) -> Iterator[tuple[Hashable, list[Completion]]]:
        while self.queue:
            items = [self.queue.popleft() for _ in range(min(self.batch_size, len(self.queue)))]
            outs = self.call([r for _, r in items])
            self.stats["batches"] += 1
            for (key, _), out in zip(items, outs):
                account(self.stats, out)
                yield key, out

