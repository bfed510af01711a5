"""Stage ppo: RL-CAI (Bai et al. 2022 sec. 4): the SL-CAI policy trained with PPO against the
reward model, with a KL penalty to the SL-CAI reference. Writes RUN_DIR/ppo/: metrics.jsonl,
tensorboard/, ppo.png (reward and KL per iteration), checkpoints/iter_N/, model/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.stages.context import Context

SECTIONS = ("model", "prompts", "ppo", "seed")


def last_checkpoint(folder: Path) -> Path | None:
    done = [d for d in folder.glob("iter_*") if (d / "trainer_state.json").exists()]
    return max(done, key=lambda d: int(d.name.split("_")[1])) if done else None


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(it, [r["reward/mean"] for r in rows], marker="o")
    ax[0].set(title="reward (mean)", xlabel="iteration")
    ax[1].plot(it, [r["kl/mean"] for r in rows], marker="o", color="tab:red")
    ax[1].set(title="KL to reference (per answer)", xlabel="iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(ctx: Context) -> dict:
    import ray

    from cai_ray.rl.trainer import PpoTrainer, Roles
    from cai_ray.train.core import MetricsWriter

    cfg = ctx.job.ppo
    out = ctx.run.stage_dir("ppo")
    sft = ctx.sft_model()
    reward_model = ctx.stage_model("reward")
    if not cfg.reward_fn and not reward_model:
        raise InputError(f"{ctx.run.path}/reward/model: no reward model; run the reward stage "
                         f"first or set ppo.reward_fn")
    ckpt = last_checkpoint(out / "checkpoints")
    start, history = 0, []
    if ckpt:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        start = state["iteration"]
        history = [r for r in _read(out / "metrics.jsonl") if r["iteration"] <= start]
    roles = Roles(policy=str(ckpt / "policy") if ckpt else sft, reference=sft,
                  critic=str(ckpt / "critic") if ckpt else (reward_model or sft),
                  reward_model=reward_model, tokenizer=sft)
    prompts = ctx.train_prompts(ctx.red_team.prompts) + ctx.train_prompts(ctx.helpful.prompts)
    pool = ctx.engine_pool(roles.policy, name="rollout",
                           shared={"CPU": 1} if cfg.colocate else None)  # a learner rank each
    writer = MetricsWriter(out, True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    try:
        trainer = PpoTrainer(cfg, roles, pool, prompts, out, seed=ctx.job.seed,
                             reward_fn=cfg.reward_fn, quiet=ctx.quiet)
        trainer.version = start
        trainer.history = history
        if ckpt:
            trainer.kl.value = state["kl_coef"]
        bar = ctx.progress(cfg.iterations, "ppo", initial=start, unit="iter")

        def on_iteration(tr, row):
            writer.log(row["iteration"], row)
            plot(tr.history, out / "ppo.png")
            bar.update(1)
            if row["iteration"] % cfg.checkpoint_every == 0 or row["iteration"] == cfg.iterations:
                tr.save(out / "checkpoints" / f"iter_{row['iteration']}")

        rows = trainer.run(start, on_iteration)
        bar.close()
        final = last_checkpoint(out / "checkpoints")
        shutil.rmtree(out / "model", ignore_errors=True)
        shutil.copytree(final / "policy", out / "model")
        peak = max(ray.get(trainer.learners.all("peak_rss_mb")))
    finally:
        writer.close()
        pool.shutdown()
    first, last = rows[0], rows[-1]
    return {"iterations": len(rows), "resumed_from": start,
            "reward_first": first["reward/mean"], "reward_last": last["reward/mean"],
            "kl_first": first["kl/mean"], "kl_last": last["kl/mean"],
            "timing/iteration_s_mean": sum(r["timing/iteration_s"] for r in rows) / len(rows),
            "timing/weight_sync_s_mean": sum(r["timing/weight_sync_s"] for r in rows) / len(rows),
            "learner_peak_rss_mb": peak, "mode": "async" if cfg.async_mode else "sync",
            "model": str(out / "model")}


def _read(path: Path) -> list[dict]:
    from cai_ray.rundir import read_jsonl

    return read_jsonl(path)
