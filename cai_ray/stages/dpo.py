"""Stage dpo: direct preference optimisation of the current policy on the AI-labelled pairs, no
reward model and no RL (the HF Constitutional AI recipe's second step). DPO, IPO or conservative
DPO on the judge's soft labels (cai_ray/algos/dpo.py), on the training core (DeepSpeed ZeRO under
Ray Train, checkpoints, resume, metrics, TensorBoard). Writes RUN_DIR/dpo/model.

Data: the preferences stage's pairs (default), the SL-CAI pairs (revision chosen over the initial
answer), or a user's file. The reference is the policy this stage starts from; its log-probs are
computed once before training and stored with the data (train/dpo.py).
"""

from __future__ import annotations

from pathlib import Path

from cai_ray.config.sections import DPO_DATA
from cai_ray.rundir.rows import PreferenceRow
from cai_ray.stages.base import Stage
from cai_ray.stages.context import Context
from cai_ray.stages.data import read_rows, split_rows, write_split
from cai_ray.stages.registry import register_stage
from cai_ray.stages.resources import trainer_need


def reads(job) -> tuple[str, ...]:
    """The artifacts this stage needs (cai_ray/stages/graph.py)."""
    if job.dpo.online:
        return ("policy", "reward_model") if job.dpo.ranker == "model" else ("policy",)
    src = {"preferences": ("preferences",), "sl_cai_pairs": ("pairs",)}
    return ("policy",) + src.get(job.dpo.data, ())


def check(job, constitution, base: str) -> None:
    """A user's preference file is read at load time: it exists, and every row has a prompt or a
    conversation, both answers, and a soft label in [0, 1] where it gives one."""
    if job.dpo.online:
        from cai_ray.stages import online_dpo

        online_dpo.check(job, constitution)
    elif job.dpo.data not in DPO_DATA:
        read_rows(job.dpo.data, PreferenceRow, "dpo.data")


def needs(job):
    """Offline: the trainer's workers. Online: the rl stage's (engines, learners, a judge)."""
    if not job.dpo.online:
        return trainer_need(job.dpo, "dpo.num_workers")
    from cai_ray import judges
    from cai_ray.stages import online_dpo, rl
    from cai_ray.stages.resources import engine_need, plus

    need = rl.needs(job.model_copy(update={"rl": online_dpo.rl_section(job)}))
    if job.dpo.heldout_prompts and job.dpo.ranker.split(":")[0] != "judge":
        # the held-out judge's own actors (a judge ranker's are counted by rl.needs)
        need = plus(need, engine_need(judges.engine_section(job, separate=True), "judge.engine"))
    return need


def data_source(ctx: Context) -> Path | str:
    spec = ctx.job.dpo.data
    return {"preferences": ctx.run.path / "preferences" / "data",
            "sl_cai_pairs": ctx.run.path / "sl_cai" / "pairs"}.get(spec, spec)


def run(ctx: Context) -> dict:
    from cai_ray.train.core import fit
    from cai_ray.train.dpo import DpoTask
    from cai_ray.train.spec import TrainSpec

    cfg = ctx.job.dpo
    if cfg.online:
        from cai_ray.stages import online_dpo

        return online_dpo.run(ctx)
    out = ctx.run.stage_dir("dpo")
    src = data_source(ctx)
    rows = read_rows(src, PreferenceRow, "the DPO pairs")
    train, evals = split_rows(rows, cfg.eval_fraction)
    data = write_split(out / "data", train, evals)
    start = ctx.policy_model()
    task = DpoTask(max_len=cfg.max_len, beta=cfg.beta, loss_type=cfg.loss_type,
                   label_smoothing=cfg.label_smoothing, soft_labels=cfg.soft_labels,
                   packing=cfg.packing, share_prompt=cfg.share_prompt,
                   ipo_per_token=cfg.ipo_per_token)
    m = fit(task, start, data, TrainSpec.of(cfg, plugins=tuple(ctx.job.plugins)), out,
            seed=ctx.job.seed)
    keys = ("eval/loss", "eval/rewards/accuracy", "eval/rewards/margin", "eval/rewards/chosen",
            "eval/rewards/rejected", "eval/logps/chosen", "eval/logps/rejected",
            "train/rewards/accuracy", "train/rewards/margin", "perf/samples_per_s",
            "perf/tokens_per_s", "perf/pad_share")
    return {"pairs_train": len(train), "pairs_eval": len(evals), "data": str(src),
            "start_model": str(start), "loss_type": cfg.loss_type, "beta": cfg.beta,
            **({"ipo_per_token": cfg.ipo_per_token} if cfg.loss_type == "ipo" else {}),
            "soft_labels": any(0 < float(r.get("p_chosen", 1.0)) < 1 for r in rows),
            "steps": m.get("step"), "train/loss_first": m.get("train/loss_first"),
            "train/loss_last": m.get("train/loss"), **{k: m.get(k) for k in keys},
            "model": str(out / "model")}


STAGE = register_stage(Stage(
    name="dpo", after="reward",
    about=("or, without a reward model: the policy learns the labelled pairs directly (DPO, IPO, "
           "conservative DPO)"),
    run=run, sections=lambda job: ("model", "dpo", "seed") + (
        ("prompts", "judge", "engine") if job.dpo.online else ()),
    reads=reads, produces=("policy",), outputs=("dpo/model/config.json",),
    needs=needs,
    key_figures=("eval/rewards/accuracy", "eval/rewards/margin", "train/loss_last",
                 "iterations", "heldout/win_rate", "dpo/margin", "kl/mean"),
    check=check,
    instead={"preferences": "set dpo.data to a preference file",
             "pairs": "set dpo.data to a preference file"}))
