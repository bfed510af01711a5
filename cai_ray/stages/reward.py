"""Stage reward: a preference model trained on the AI judge's soft labels (Bai et al. 2022
sec. 4.1), Bradley-Terry loss, DeepSpeed ZeRO under Ray Train; with reward.human_data, on the
paper's mix of human comparisons and AI-labelled pairs (reward.human_fraction), its held-out
accuracy reported for each. Writes RUN_DIR/reward/model."""

from __future__ import annotations

from cai_ray.rundir.rows import PreferenceRow
from cai_ray.stages.base import Stage
from cai_ray.stages.context import Context
from cai_ray.stages.data import mix, read_rows, split_rows, write_split
from cai_ray.stages.registry import register_stage
from cai_ray.stages.resources import trainer_need


def reads(job) -> tuple[str, ...]:
    """The artifacts this stage needs (cai_ray/stages/graph.py)."""
    return () if job.reward.data else ("preferences",)


def check(job, constitution, base: str) -> None:
    """At load time: a user's preference data (every row), and the model the head sits on."""
    if job.reward.data:
        read_rows(job.reward.data, PreferenceRow, "reward.data")
    if job.reward.human_data:
        human_rows(job.reward.human_data, 1)
    if job.reward.base_model:
        from cai_ray import models

        models.check(job.reward.base_model, "reward.base_model")


def human_rows(path: str, n: int) -> list[dict]:
    """Up to n human-labelled pairs (HH-RLHF or a pairs JSONL) as preference rows."""
    from cai_ray.errors import InputError
    from cai_ray.judges.quality import hh_pairs

    try:
        pairs = hh_pairs(path, n)
    except InputError as exc:
        raise InputError(f"reward.human_data: {exc}") from None
    if not pairs:
        raise InputError(f"reward.human_data {path}: no usable labelled pairs")
    return [{"id": f"human-{p['id']}", "conversation": p["conversation"], "chosen": p["chosen"],
             "rejected": p["rejected"], "p_chosen": 1.0, "source": "human"} for p in pairs]


def run(ctx: Context) -> dict:
    from cai_ray import models
    from cai_ray.train.core import fit
    from cai_ray.train.reward import RewardTask
    from cai_ray.train.spec import TrainSpec

    cfg = ctx.job.reward
    out = ctx.run.stage_dir("reward")
    rows = read_rows(cfg.data or ctx.run.path / "preferences" / "data", PreferenceRow,
                     "the preference data")
    if cfg.human_data:
        f = cfg.human_fraction
        human = human_rows(cfg.human_data, max(1, round(f * len(rows) / (1 - f))))
        rows = mix([{**r, "source": "ai"} for r in rows], human, f, ctx.job.seed)
    n_human = sum(r.get("source") == "human" for r in rows)
    train, evals = split_rows(rows, cfg.eval_fraction)
    data = write_split(out / "data", train, evals)
    base = models.resolve(cfg.base_model) if cfg.base_model else ctx.base_model
    metrics = fit(RewardTask(max_len=cfg.max_len), base, data,
                  TrainSpec.of(cfg, plugins=tuple(ctx.job.plugins)), out, seed=ctx.job.seed)
    return {"pairs_train": len(train), "pairs_eval": len(evals), "steps": metrics.get("step"),
            "soft_labels": any(0 < float(r.get("p_chosen", 1.0)) < 1 for r in rows),
            "train/loss_first": metrics.get("train/loss_first"),
            "train/loss_last": metrics.get("train/loss"), "eval/loss": metrics.get("eval/loss"),
            "eval/accuracy": metrics.get("eval/accuracy"),
            "perf/samples_per_s": metrics.get("perf/samples_per_s"),
            **({"pairs_human": n_human, "pairs_ai": len(rows) - n_human,
                "human_fraction": n_human / len(rows),
                **{k: metrics.get(k) for k in ("eval/accuracy/human", "eval/accuracy/ai",
                                               "eval/pairs/human", "eval/pairs/ai")}}
               if n_human else {}),
            "model": str(out / "model")}


STAGE = register_stage(Stage(
    name="reward", after="preferences",
    about=("a preference model learns the judge's soft labels (Bradley-Terry)"),
    run=run, sections=("model", "reward", "seed"),
    reads=reads, produces=("reward_model",), outputs=("reward/model/config.json",),
    needs=lambda job: trainer_need(job.reward, "reward.num_workers"),
    key_figures=("eval/accuracy", "eval/accuracy/human", "eval/accuracy/ai", "train/loss_last"),
    check=check,
    instead={"preferences": "set reward.data to a preference file"}))
