"""workers.jsonl lists every Ray Train worker, though only rank 0's copy of the output folder
reaches the run directory: two processes in a real gloo group, each writing to a folder of its
own as workers on two machines would."""

from __future__ import annotations

import json
import os

import torch.distributed as dist
import torch.multiprocessing as mp

from cai_ray.cluster import free_port


def _worker(rank: int, port: int, root: str) -> None:
    from pathlib import Path

    from cai_ray.train.core import _record_workers

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        _record_workers(Path(root) / f"node{rank}", rank, f"node-{rank}")
    finally:
        dist.destroy_process_group()


def test_rank_0_writes_every_worker_and_other_nodes_write_nothing(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    lines = [json.loads(x) for x in (tmp_path / "node0" / "workers.jsonl").read_text().splitlines()]
    assert sorted((r["rank"], r["node"]) for r in lines) == [(0, "node-0"), (1, "node-1")]
    assert len({r["pid"] for r in lines}) == 2 and os.getpid() not in {r["pid"] for r in lines}
    assert not (tmp_path / "node1" / "workers.jsonl").exists()
