"""Stage sft: fine-tune the policy on the SL-CAI revisions mixed with helpful answers (Bai et al.
2022 sec. 3: the SL-CAI model), with DeepSpeed ZeRO under Ray Train. Writes RUN_DIR/sft/model."""

from __future__ import annotations

from cai_ray.rundir.rows import SftRow
from cai_ray.stages.base import Stage
from cai_ray.stages.context import Context
from cai_ray.stages.data import read_rows, split_rows, write_split
from cai_ray.stages.registry import register_stage
from cai_ray.stages.resources import trainer_need


def reads(job) -> tuple[str, ...]:
    """The artifacts this stage needs (cai_ray/stages/graph.py)."""
    return () if job.sft.data else ("sft_data",)


def check(job, constitution, base: str) -> None:
    """A user's SFT data is read at load time: it exists, and every row has messages with an
    assistant turn."""
    if job.sft.data:
        read_rows(job.sft.data, SftRow, "sft.data")


def run(ctx: Context) -> dict:
    from cai_ray.train.core import fit
    from cai_ray.train.sft import SftTask
    from cai_ray.train.spec import TrainSpec

    cfg = ctx.job.sft
    out = ctx.run.stage_dir("sft")
    rows = read_rows(cfg.data or ctx.run.path / "sl_cai" / "sft", SftRow, "the SFT data")
    train, evals = split_rows(rows, cfg.eval_fraction)
    data = write_split(out / "data", train, evals)
    metrics = fit(SftTask(max_len=cfg.max_len, packing=cfg.packing), ctx.base_model, data,
                  TrainSpec.of(cfg, plugins=tuple(ctx.job.plugins)), out, seed=ctx.job.seed)
    return {"rows_train": len(train), "rows_eval": len(evals), "steps": metrics.get("step"),
            "train/loss_first": metrics.get("train/loss_first"),
            "train/loss_last": metrics.get("train/loss"), "eval/loss": metrics.get("eval/loss"),
            "perf/tokens_per_s": metrics.get("perf/tokens_per_s"), "model": str(out / "model"),
            "zero_stage": cfg.zero_stage, "num_workers": cfg.num_workers}


STAGE = register_stage(Stage(
    name="sft", after="sl_cai",
    about=("fine-tune the policy on the final revisions, mixed with helpful answers (DeepSpeed "
           "ZeRO, Ray Train)"),
    run=run, sections=("model", "sft", "seed"),
    reads=reads, produces=("policy",), outputs=("sft/model/config.json",),
    needs=lambda job: trainer_need(job.sft, "sft.num_workers"),
    key_figures=("train/loss_first", "train/loss_last", "eval/loss"),
    check=check,
    instead={"sft_data": "set sft.data"}))
