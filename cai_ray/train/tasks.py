"""What one trainer does, as a Task: build the model, encode and batch the rows, compute a step's
loss, evaluate. The training core (core.py) owns the rest. Tasks are registered by name and built
from plain values; the instance itself crosses to the Ray Train workers.

    task = make_task("dpo", max_len=256, beta=0.1)    # train/dpo.py DpoTask
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

TASKS: dict[str, str] = {"sft": "cai_ray.train.sft:SftTask",
                         "reward": "cai_ray.train.reward:RewardTask",
                         "dpo": "cai_ray.train.dpo:DpoTask"}
"""name -> module:class (imported on use: a worker imports only the task it runs)."""


class Task(Protocol):
    name: str

    def build_model(self, model_path: str): ...

    def encode(self, rows: list[dict], tokenizer) -> list[dict]: ...

    def collate(self, items: list[dict], pad_id: int) -> dict: ...

    def step(self, engine, batch: dict) -> tuple[Any, dict]: ...

    def evaluate(self, engine, batches: list[dict]) -> dict: ...

    def tokens(self, batch: dict) -> int: ...

    # optional: length(item) -> int (length grouping), prepare(engine, splits, data_dir, micro,
    # pad_id) -> dict (work before the first step: DPO's reference log-probs), lora_task_type


def task_class(name: str) -> type:
    if name not in TASKS:
        raise ValueError(f"unknown training task {name!r}; choose from {sorted(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_task(name: str, **options) -> Task:
    return task_class(name)(**options)
