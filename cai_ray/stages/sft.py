"""Stage sft: fine-tune the policy on the SL-CAI revisions mixed with helpful answers (Bai et al.
2022 sec. 3: the SL-CAI model), with DeepSpeed ZeRO under Ray Train. Writes RUN_DIR/sft/model."""

from __future__ import annotations

from cai_ray.stages.context import Context
from cai_ray.stages.data import read_rows, split_rows, write_split

SECTIONS = ("model", "sft", "seed")
PRODUCES = ("policy",)
KEY_FIGURES = ("train/loss_first", "train/loss_last", "eval/loss")


def reads(job) -> tuple[str, ...]:
    """What this stage needs from earlier ones (cai_ray/stages/graph.py)."""
    return () if job.sft.data else ("sft_data",)


def check(job, constitution, base: str) -> None:
    """A user's SFT data is read at load time: it exists and has a messages column."""
    if job.sft.data:
        read_rows(job.sft.data, ("messages",), "sft.data")


def run(ctx: Context) -> dict:
    from cai_ray.train.core import fit

    cfg = ctx.job.sft
    out = ctx.run.stage_dir("sft")
    rows = read_rows(cfg.data or ctx.run.path / "sl_cai" / "sft", ("messages",), "the SFT data")
    train, evals = split_rows(rows, cfg.eval_fraction)
    data = write_split(out / "data", train, evals)
    metrics = fit("sft", ctx.base_model, data, cfg.model_dump(), out, seed=ctx.job.seed,
                  task_kwargs={"max_len": cfg.max_len, "packing": cfg.packing})
    return {"rows_train": len(train), "rows_eval": len(evals), "steps": metrics.get("step"),
            "train/loss_first": metrics.get("train/loss_first"),
            "train/loss_last": metrics.get("train/loss"), "eval/loss": metrics.get("eval/loss"),
            "perf/tokens_per_s": metrics.get("perf/tokens_per_s"), "model": str(out / "model"),
            "zero_stage": cfg.zero_stage, "num_workers": cfg.num_workers}
