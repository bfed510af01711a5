"""One training core for every trainer: DeepSpeed ZeRO inside Ray Train workers.

    fit(SftTask(max_len=512), model_path, data_dir, TrainSpec.of(job.sft), out_dir)

A Task (train/tasks.py) says how to build the model, batch the rows and compute a step's loss;
this module owns everything else: the DeepSpeed config, the loop, gradient accumulation,
checkpoints every k steps (reported to Ray Train, so a restarted worker group resumes from the last
one), metrics to JSONL and TensorBoard, and the final `save_pretrained` export (ZeRO-3 gathered).
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai_ray.train.dist import (
    TRAINER_MMAP_THRESHOLD,
    build_engine,
    compute,
    copy_tokenizer,
    export_model,
    limit_heap,
    load_state,
    save_state,
    trainer_env,
)
from cai_ray.train.spec import TrainSpec

CKPT_TAG = "ckpt"


@dataclass(frozen=True)
class FitSpec:
    """What every Ray Train worker of one fit receives (paths as the driver knows them)."""

    task: Any
    """A Task instance (train/tasks.py)."""
    train: TrainSpec
    model_path: str
    data_dir: str
    out_dir: str
    export_dir: str
    seed: int = 0
    threads: int | None = None
    """torch threads per worker on CPU (Ray gives a 1-CPU worker one)."""
    fail_at_step: int | None = None
    """Fault injection for tests: rank 0 dies at this step, once."""


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the base learning rate at optimizer step s (0-based)."""
    def f(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        frac = min(1.0, (s - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * frac)) if schedule == "cosine" else 1.0 - frac
    return f


GROUP_SPAN = 64
"""Length grouping sorts windows of this many batches: batches of similar rows, still random."""


def batches(items: list[dict], size: int, seed: int, epoch: int, shuffle: bool = True,
            keep_last: bool = False, lengths: list[int] | None = None):
    """Batches of `size` (training drops a short last batch; evaluation keeps it). With lengths,
    each window of GROUP_SPAN batches of the shuffled rows is sorted by length before it is cut
    into batches, and the batches are shuffled again: rows of similar length share a batch (less
    padding) while the order stays random."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(items)))
    if shuffle:
        rng.shuffle(order)
    stop = len(order) if keep_last else len(order) - size + 1
    if lengths is not None:
        span = size * GROUP_SPAN
        order = [i for k in range(0, len(order), span)
                 for i in sorted(order[k:k + span], key=lambda i: -lengths[i])]
    out = [[items[i] for i in order[k:k + size]] for k in range(0, stop, size)]
    if lengths is not None and shuffle:
        rng.shuffle(out)
    return out


def pad_share(batch: dict) -> tuple[int, int]:
    """(padded positions, all positions) of a collated batch."""
    mask = batch["attention_mask"]
    return int(mask.numel() - mask.sum()), int(mask.numel())


class MetricsWriter:
    """Rank 0's metrics: one JSON line per step plus TensorBoard scalars (namespaced keys)."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.fh = open(out_dir / "metrics.jsonl", "a")
        self.tb = None
        if os.environ.get("CAI_RAY_TENSORBOARD", "1") == "0":  # tracking.tensorboard: false
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            self.tb = None

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.fh.write(json.dumps({"step": step, **metrics}) + "\n")
        self.fh.flush()
        if self.tb:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.fh.close()
            if self.tb:
                self.tb.close()


def train_loop(config: dict) -> None:
    """Runs in every Ray Train worker (gloo on CPU, NCCL on GPU); config: {"spec": FitSpec}."""
    import ray.train
    import torch
    from transformers import AutoTokenizer

    from cai_ray.config.plugins import load_plugins
    from cai_ray.models import trust_remote_code
    from cai_ray.platform import init_deepspeed_comm, peak_rss_mb
    from cai_ray.rundir.nodeview import node_dir, on_node, publish
    from cai_ray.train import lora

    fs: FitSpec = config["spec"]
    cfg, task = fs.train, fs.task
    load_plugins(list(cfg.plugins))
    model_path, data_dir = on_node(fs.model_path), on_node(fs.data_dir)  # this node's copies
    out_dir, export_dir = Path(node_dir(fs.out_dir)), node_dir(fs.export_dir)
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.manual_seed(fs.seed)
    if fs.threads:  # Ray sets OMP_NUM_THREADS to the worker's 1 CPU; use its share
        torch.set_num_threads(fs.threads)
    limit_heap(TRAINER_MMAP_THRESHOLD)  # speed over a lean heap: a trainer has the machine
    init_deepspeed_comm(cfg.use_gpu)
    _record_workers(out_dir, rank, ray.get_runtime_context().get_node_id())
    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code())
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train_items = task.encode(_read_rows(data_dir, "train"), tok)
    eval_items = task.encode(_read_rows(data_dir, "eval"), tok)
    global_batch = cfg.micro_batch_size * world
    steps_per_epoch = max(1, len(train_items) // (global_batch * cfg.grad_accum))
    total = min(cfg.max_steps or 10 ** 9, steps_per_epoch * cfg.epochs)

    model = lora.prepare(task.build_model(model_path), cfg,
                         getattr(task, "lora_task_type", "CAUSAL_LM"))
    engine = build_engine(model, cfg, cfg.lr, world)
    optimizer = engine.optimizer
    lr_at = lr_lambda(cfg.lr_schedule, cfg.warmup_steps, total)
    with compute(cfg.precision, engine.device):  # DPO's reference pass: the policy's own precision
        prepared = task.prepare(engine, {"train": train_items, "eval": eval_items},
                                data_dir, cfg.micro_batch_size, pad_id) \
            if hasattr(task, "prepare") else {}
    size_of = getattr(task, "length", lambda x: len(x["input_ids"]))
    lengths = [size_of(x) for x in train_items] if cfg.group_by_length else None

    step = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            step = load_state(engine, d, CKPT_TAG)["step"]
    writer = MetricsWriter(out_dir, rank == 0)
    t_start, tokens_seen, t_step = time.time(), 0, time.time()
    eval_batches = [task.collate(b, pad_id) for b in
                    batches(eval_items, cfg.micro_batch_size, 0, 0, shuffle=False,
                            keep_last=True)]
    first_loss = None
    while step < total:
        t_step = time.time()
        epoch, within = divmod(step, steps_per_epoch)
        # one optimizer step's rows (length-grouped at the step: the same rows whatever the
        # split into micro-batches), cut into grad_accum micro-batches of similar lengths
        rows = batches(train_items, global_batch * cfg.grad_accum, fs.seed, epoch,
                       lengths=lengths)[within]
        if lengths is not None:
            rows = sorted(rows, key=size_of, reverse=True)
        micro = [rows[k:k + global_batch] for k in range(0, len(rows), global_batch)]
        losses, extra, padded, positions, step_tokens = [], {}, 0, 0, 0
        lr = cfg.lr * lr_at(step)
        for group in optimizer.param_groups:  # the schedule, set before this optimizer step
            group["lr"] = lr
        for mb in micro:
            batch = task.collate(mb[rank::world], pad_id)
            p, n = pad_share(batch)
            padded, positions = padded + p, positions + n
            engine.train()
            with compute(cfg.precision, engine.device):
                loss, m = task.step(engine, batch)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            step_tokens += task.tokens(batch) * world
            for k, v in m.items():
                extra[k] = extra.get(k, 0.0) + v / cfg.grad_accum
        step += 1
        tokens_seen += step_tokens
        loss_v = _all_mean(sum(losses) / len(losses))
        first_loss = loss_v if first_loss is None else first_loss
        elapsed = time.time() - t_start
        step_s = time.time() - t_step
        metrics = {"train/loss": loss_v, "train/lr": lr, "perf/step_s": step_s,
                   "train/grad_norm": float(engine.get_global_grad_norm() or 0.0),
                   "perf/step_tokens": step_tokens,
                   "train/epoch": epoch, "perf/tokens_per_s": tokens_seen / elapsed,
                   "perf/samples_per_s": step * global_batch * cfg.grad_accum / elapsed,
                   "perf/pad_share": _all_mean(padded / max(positions, 1)),
                   "memory/peak_rss_mb": peak_rss_mb(),
                   **{f"train/{k}": _all_mean(v) for k, v in sorted(extra.items())}}
        if step == 1:
            metrics.update(prepared)
        last = step == total
        if last and eval_batches:
            with compute(cfg.precision, engine.device):
                metrics.update(task.evaluate(engine, eval_batches))
        writer.log(step, metrics)
        if step % cfg.checkpoint_every == 0 or last:
            _report(engine, step, {**metrics, "step": step, "train/loss_first": first_loss},
                    out_dir, export_dir, cfg.lora.save if cfg.lora else None, last)
        if fs.fail_at_step == step and not ckpt and rank == 0:
            # Fault injection for tests: this worker dies mid-run, a few seconds after the last
            # checkpoint was reported (Ray Train's controller registers reports when it polls).
            time.sleep(5)
            os._exit(1)
    writer.close()
    if rank == 0:  # from another node than the driver's: the export, metrics, caches to storage
        for path in (fs.out_dir, fs.data_dir):
            publish(path)


def _record_workers(out_dir: Path, rank: int, node: str) -> None:
    """Where each worker ran (node, pid): out_dir/workers.jsonl, one line per worker start. Rank 0
    writes every rank's line: its out_dir is the copy that reaches the run directory (another
    node's copy never does)."""
    import torch.distributed as dist

    recs = [{"rank": rank, "node": node, "pid": os.getpid(), "time": time.time()}]
    if dist.is_initialized() and dist.get_world_size() > 1:
        mine, recs = recs[0], [None] * dist.get_world_size()
        dist.all_gather_object(recs, mine)
    if rank != 0:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "workers.jsonl", "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in recs)


def _all_mean(x: float) -> float:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def _read_rows(data_dir: str, split: str) -> list[dict]:
    p = Path(data_dir) / f"{split}.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] \
        if p.exists() else []


def _report(engine, step: int, metrics: dict, out_dir: Path, export_dir: str,
            lora_save: str | None, last: bool) -> None:
    import ray.train
    from ray.train import Checkpoint

    # staged beside the run's own output, not in the system's /tmp (it may be small or a RAM disk)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ckpt-") as tmp:
        save_state(engine, tmp, CKPT_TAG, {"step": step})
        if last:
            export_model(engine, export_dir, lora_save)
        ray.train.report({k: v for k, v in metrics.items() if v is not None},
                         checkpoint=Checkpoint.from_directory(tmp))


def fit(task, model_path: str, data_dir: Path, spec: TrainSpec, out_dir: Path, *, seed: int = 0,
        fail_at_step: int | None = None) -> dict:
    """Driver side: run train_loop on spec.num_workers Ray Train workers; the model is exported
    to out_dir/model. task: a Task instance (train/tasks.py). Returns the last reported
    metrics."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cai_ray.platform import num_cores
    from cai_ray.rundir import nodeview

    out_dir = Path(out_dir).resolve()
    export = out_dir / "model"
    if Path(model_path).exists():  # Ray Train workers run in their own folders
        model_path = str(Path(model_path).resolve())
    threads = None if spec.use_gpu else max(1, num_cores() // spec.num_workers)
    fs = FitSpec(task, spec, str(model_path), str(Path(data_dir).resolve()), str(out_dir),
                 str(export), seed=seed, threads=threads, fail_at_step=fail_at_step)
    name = f"{task.name}-{out_dir.name}-{int(time.time())}"
    storage, filesystem = nodeview.train_storage(out_dir, name)
    nodeview.share()  # the data the stage just wrote, for workers on other nodes
    trainer = TorchTrainer(
        train_loop, train_loop_config={"spec": fs},
        scaling_config=ScalingConfig(num_workers=spec.num_workers, use_gpu=spec.use_gpu,
                                     resources_per_worker={"CPU": 1},
                                     placement_strategy=spec.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo"),
        run_config=RunConfig(name="ray_train", storage_path=storage, storage_filesystem=filesystem,
                             worker_runtime_env={"env_vars": trainer_env(spec.lora is not None)},
                             failure_config=FailureConfig(max_failures=spec.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=spec.keep_checkpoints)))
    result = trainer.fit()
    if result.error:
        raise result.error
    nodeview.gather(out_dir)  # what workers on other nodes wrote: the model, the metrics
    nodeview.drop_train_storage(name)
    metrics = dict(result.metrics or {})
    if not any((export / f).exists() for f in ("config.json", "adapter_config.json")):
        raise RuntimeError(f"{task.name}: training finished without exporting {export}")
    copy_tokenizer(model_path, export)
    return metrics
