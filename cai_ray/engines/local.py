"""An in-process stand-in for EnginePool: the same scheduler interface over one Engine, no Ray.
For debugging a stage in a notebook and for tests of a stage's logic with a real engine."""

from __future__ import annotations

from collections import deque
from typing import Hashable, Iterator

from cai_ray.engines.base import Completion, Engine, Request, Sampling


class LocalPool:
    name = "local"

    def __init__(self, engine: Engine):
        self.engine = engine
        self.actors = [engine]

    def __len__(self) -> int:
        return 1

    def scheduler(self, sampling: Sampling, batch_size: int = 16,
                  max_in_flight: int = 1) -> "LocalScheduler":
        return LocalScheduler(self.engine, sampling, batch_size)

    def call_all(self, method: str, *args):
        return [getattr(self.engine, method)(*args)]

    def shutdown(self) -> None:
        pass


class LocalScheduler:
    def __init__(self, engine: Engine, sampling: Sampling, batch_size: int):
        self.engine, self.sampling, self.batch_size = engine, sampling, batch_size
        self.queue: deque[tuple[Hashable, Request]] = deque()
        self.stats = {"batches": 0, "retried_batches": 0, "actor_failures": 0,
                      "generated_tokens": 0, "prompt_tokens": 0, "requests": 0}

    def put(self, key: Hashable, request: Request) -> None:
        self.queue.append((key, request))

    def results(self) -> Iterator[tuple[Hashable, list[Completion]]]:
        while self.queue:
            items = [self.queue.popleft() for _ in range(min(self.batch_size, len(self.queue)))]
            outs = self.engine.generate([r for _, r in items], self.sampling)
            self.stats["batches"] += 1
            for (key, _), completions in zip(items, outs):
                self.stats["requests"] += 1
                self.stats["prompt_tokens"] += len(completions[0].prompt_token_ids)
                self.stats["generated_tokens"] += sum(len(c.token_ids) for c in completions)
                yield key, completions
