"""Stage rl: RL-CAI (Bai et al. 2022 sec. 4): the SL-CAI policy trained against the reward model (or
the constitutional judge directly, or a reward function) with a KL term to the SL-CAI reference,
by any algorithm of the registry (rl.algorithm: ppo, grpo, rloo, reinforce_pp, ...). `ppo` is the
stage's old name. Writes RUN_DIR/rl/: metrics.jsonl, tensorboard/, rl.png, checkpoints/iter_N/
(the newest rl.keep_checkpoints, with optimizer state), model/."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.rundir.files import read_jsonl, write_jsonl_atomic
from cai_ray.stages import resources as R
from cai_ray.stages.base import Stage
from cai_ray.stages.context import Context
from cai_ray.stages.registry import register_stage


def check(job, constitution, base: str) -> None:
    """What the RL stage will need, checked before anything starts: its reward source loads (a
    module:function imports and returns one number per completion), the judge has principles and
    its model resolves, and a reward model it names resolves (the stage graph checks that the
    reward stage's model is there or made by this run)."""
    from cai_ray import models
    from cai_ray.rewards import check_reward, reward_kind

    rl = job.rl
    if served_judge(rl.reward) and rl.judge_mode != "pairwise":
        raise InputError(f"rl.judge_mode {rl.judge_mode}: the served judge ({rl.reward}) "
                         f"compares two answers; use pairwise")
    check_reward(rl.reward, rl.max_new_tokens)
    kind, _ = reward_kind(rl.reward)
    if kind == "judge":
        constitution.require("judge", job.constitution.path)
        from cai_ray import judges
        from cai_ray.judges.gate import check_config

        judges.check(job.judge)
        check_config(job.judge)
        if job.judge.ranking == "groupwise" and rl.samples_per_prompt < 2:
            raise InputError(f"judge.ranking groupwise ranks the answers to one prompt against "
                             f"each other; rl.samples_per_prompt is {rl.samples_per_prompt} "
                             f"(give 2 or more)")
    if kind == "model" and rl.reward_model:
        models.check(rl.reward_model, "rl.reward_model")


def served_judge(reward: str) -> bool:
    """rl.reward names the judge behind `cai-ray serve --judge` (.../v1/judge)."""
    from cai_ray.rewards import reward_kind
    from cai_ray.rewards.remote import http_route

    return reward_kind(reward)[0] in ("http", "https") and http_route(reward) == "judge"


def reads(job) -> tuple[str, ...]:
    """The artifacts this stage needs (cai_ray/stages/graph.py)."""
    from cai_ray.rewards import reward_kind

    try:
        kind = reward_kind(job.rl.reward)[0]
    except InputError:  # check() names the bad reward source when rl runs
        kind = None
    model = kind == "model" and not job.rl.reward_model
    return ("policy", "reward_model") if model else ("policy",)


def needs(job) -> R.Need:
    """The rollout engines, the learner ranks (in the engines' bundles when colocated) and, with
    the judge as the reward, the judge's engine actors, all at once."""
    from cai_ray import judges
    from cai_ray.rewards import reward_kind

    need = R.engine_need(job.engine)
    if not job.rl.colocate:
        need = R.plus(need, R.trainer_need(job.rl, "rl.num_workers"))
    try:
        judge = reward_kind(job.rl.reward)[0] == "judge"
    except InputError:  # check() names the bad reward source
        judge = False
    if judge:
        need = R.plus(need, R.engine_need(judges.engine_section(job, separate=True),
                                          "judge.engine"))
    return need


PLOT_EVERY_S = 30  # drawing takes 0.3-1 s of the driver's loop
PHASES = ("timing/generate_s", "timing/score_s", "timing/train_s", "timing/weight_sync_s")


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints (trainer_state.json is written last), oldest first."""
    done = [d for d in folder.glob("iter_*") if (d / "trainer_state.json").exists()]
    return sorted(done, key=lambda d: int(d.name.split("_")[1]))


def prune(folder: Path, keep: int, keep_policies: int = 0) -> None:
    """Keep the newest `keep` complete checkpoints; drop older ones and any incomplete one. A
    dropped checkpoint's policy weights move to ../policies/iter_N (the newest keep_policies)."""
    done = checkpoints(folder)
    kept = folder.parent / "policies"
    for d in done[:-keep]:
        if keep_policies and (d / "policy" / "config.json").exists():
            kept.mkdir(exist_ok=True)
            shutil.rmtree(kept / d.name, ignore_errors=True)
            (d / "policy").rename(kept / d.name)
        shutil.rmtree(d, ignore_errors=True)
    if kept.exists():
        olds = sorted(kept.glob("iter_*"), key=lambda d: int(d.name.split("_")[1]))
        for d in olds[:-keep_policies] if keep_policies else olds:
            shutil.rmtree(d, ignore_errors=True)
    newest = int(done[-1].name.split("_")[1]) if done else 0
    for d in folder.glob("iter_*"):
        if d not in done and int(d.name.split("_")[1]) < newest:
            shutil.rmtree(d, ignore_errors=True)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.4))
    ax[0].plot(it, [r.get("reward/mean", float("nan")) for r in rows], marker="o")
    ax[0].set(title=f"reward (mean), {rows[-1].get('algorithm', '')}", xlabel="iteration")
    ax[1].plot(it, [r.get("kl/mean", float("nan")) for r in rows], marker="o", color="tab:red",
               label="KL to reference (per answer)")
    if any("mismatch/kl" in r for r in rows):
        ax[1].plot(it, [r.get("mismatch/kl", float("nan")) for r in rows], marker=".",
                   color="tab:purple", label="sampler vs learner KL (per token)")
    ax[1].set(title="KL", xlabel="iteration")
    ax[1].legend(fontsize=7)
    bottom = [0.0] * len(rows)
    for key, color in zip(PHASES, ("tab:blue", "tab:orange", "tab:green", "tab:gray")):
        vals = [r.get(key, 0.0) or 0.0 for r in rows]
        ax[2].bar(it, vals, bottom=bottom, color=color, label=key.split("/")[1][:-2])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax[2].set(title="seconds per iteration", xlabel="iteration")
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def judge_actors(ctx: Context, sft: str, stage: str = "rl") -> tuple[object, dict | None]:
    """The judge as the reward (direct RLAIF) on engine actors of its own where its backend needs
    them (the rollout engines' weights move), checked on labelled pairs (judge.gate) before any
    rollout is scored: (its pool or None, the check's record or None)."""
    from cai_ray import judges
    from cai_ray.judges.gate import gate

    jc = ctx.job.judge
    je = ctx.job.judge_engine() if jc.model else ctx.job.engine
    judge_pool = judges.start_actors(jc, default_model=sft, actors=lambda path: ctx.engine_pool(
        path, name="judge", engine=je))
    path = judges.model_path(jc, sft)
    try:
        check = gate(lambda: judges.attach(jc, ctx.constitution, pool=judge_pool, model_path=path,
                                           seed=ctx.job.seed, batch_size=je.batch_size,
                                           max_in_flight=je.max_in_flight),
                     jc, ctx.run, judge_model=path, constitution=ctx.constitution, stage=stage)
    except BaseException:
        if judge_pool is not None:
            judge_pool.shutdown()
        raise
    return judge_pool, check


def judge_setup(ctx: Context, cfg, sft: str, pool, out: Path, start: int, judge_pool) -> dict:
    """The judge reward's parameters: its pool (judge_actors), and for pairwise judging the SFT
    model's answers (sft_answers)."""
    from cai_ray import judges

    jc = ctx.job.judge
    pairwise = cfg.judge_mode == "pairwise" and jc.ranking != "groupwise"
    refs = sft_answers(ctx, cfg, pool, out, start) if pairwise else {}
    je = ctx.job.judge_engine() if jc.model else ctx.job.engine
    return {"pool": judge_pool, "tokenizer_path": judges.model_path(jc, sft),
            "constitution": ctx.constitution, "mode": cfg.judge_mode, "references": refs,
            "judge_cfg": jc, "seed": ctx.job.seed, "batch_size": je.batch_size,
            "max_in_flight": je.max_in_flight}


def sft_answers(ctx: Context, cfg, pool, out: Path, start: int) -> dict[str, str]:
    """The SFT model's greedy answer to every training prompt, which a pairwise judge compares
    each rollout against (start_answers, in RUN_DIR/<stage>/sft_answers.jsonl)."""
    prompts = ctx.train_prompts(ctx.red_team.prompts) + ctx.train_prompts(ctx.helpful.prompts)
    return start_answers(pool, prompts, out / "sft_answers.jsonl", start, cfg.max_new_tokens,
                         ctx.job.engine.batch_size)


def start_answers(pool, prompts, path: Path, start: int, max_tokens: int,
                  batch_size: int) -> dict[str, str]:
    """The start policy's greedy answer to each prompt: generated once, before any update, on the
    rollout engines (they hold the start weights then), kept in `path`, which a resumed stage
    reads back (missing on resume: InputError)."""
    refs = {r["prompt_id"]: r["answer"] for r in read_jsonl(path)}
    todo = [p for p in prompts if p.id not in refs]
    if todo:
        if start:
            raise InputError(f"{path}: missing on resume; the start policy's answers are written "
                             f"before the first update (remove {path.parent}/checkpoints to "
                             f"start the stage again)")
        refs.update(greedy(pool, todo, max_tokens, batch_size))
        write_jsonl_atomic(path, [{"prompt_id": k, "answer": v} for k, v in refs.items()])
    return refs


def greedy(pool, prompts, max_tokens: int, batch_size: int) -> dict[str, str]:
    """Prompt id -> the pool's greedy answer."""
    from cai_ray.generation import Request, Sampling

    sched = pool.scheduler(Sampling(max_tokens=max_tokens, temperature=0.0), batch_size)
    for p in prompts:
        sched.put(p.id, Request(p.id, messages=[{"role": "user", "content": p.prompt}]))
    return {pid: outs[0].text.strip() for pid, outs in sched.results()}


def run(ctx: Context) -> dict:
    return train(ctx, ctx.job.rl, "rl")


def train(ctx: Context, cfg, stage: str, measure=None) -> dict:
    """The RL loop of `cfg` (an RlCfg) into RUN_DIR/<stage> (the rl stage; the dpo stage's online
    mode). measure(trainer, judge_pool, out, start) -> a function called after each iteration,
    before its row is logged, that adds figures to the row (online DPO's held-out win rate); its
    `close`, if set, runs when the stage ends."""
    from cai_ray.rewards import reward_kind
    from cai_ray.rl.trainer import RlTrainer, Roles
    from cai_ray.train.core import MetricsWriter

    alg = cfg.resolved()
    sft = ctx.policy_model()  # the policy RL starts from (SFT's, or DPO's when dpo ran before)
    reward_model = cfg.reward_model and _resolve(cfg.reward_model) or \
        ctx.input_model("reward_model")
    kind, _ = reward_kind(cfg.reward)
    if kind == "model" and not reward_model:
        raise InputError(f"{ctx.run.path}/reward/model: no reward model; run the reward stage "
                         f"first, set rl.reward_model, or choose another rl.reward")
    judge_pool, check = judge_actors(ctx, sft, stage) if kind == "judge" else (None, None)
    out = ctx.run.stage_dir(stage)  # after the judge's check: a judge at chance writes nothing
    done = checkpoints(out / "checkpoints")
    ckpt = done[-1] if done else None
    start, history, state = 0, [], {}
    if ckpt:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        start = state["iteration"]
        history = [r for r in read_jsonl(out / "metrics.jsonl") if r["iteration"] <= start]
    critic_init = str(ckpt / "critic") if ckpt and (ckpt / "critic").exists() else \
        (reward_model or sft)
    roles = Roles(policy=str(ckpt / "policy") if ckpt else sft, reference=sft,
                  critic=critic_init if alg.needs_critic else None, tokenizer=sft)
    prompts = ctx.train_prompts(ctx.red_team.prompts) + ctx.train_prompts(ctx.helpful.prompts)
    # the engines load their model while the learner, reference and reward roles start
    pool = ctx.engine_pool(roles.policy, name="rollout", wait=False,
                           shared={"CPU": 1} if cfg.colocate else None)  # a learner rank each
    trainer = extra = None
    write_jsonl_atomic(out / "metrics.jsonl", history)
    writer = MetricsWriter(out, True)
    try:
        params = {"reward_model": reward_model}
        if kind == "judge":
            params.update(judge_setup(ctx, cfg, sft, pool.ready(), out, start, judge_pool))
        elif served_judge(cfg.reward):  # the judge behind `cai-ray serve --judge`, pairwise
            params["references"] = sft_answers(ctx, cfg, pool.ready(), out, start)
        trainer = RlTrainer(cfg, roles, pool, prompts, seed=ctx.job.seed, reward_params=params,
                            quiet=ctx.quiet, weight_sync=ctx.job.weight_sync(),
                            plugins=tuple(ctx.job.plugins))
        trainer.history = history
        if ckpt:
            trainer.restore(ckpt, state)
        pool.ready()
        bar = ctx.progress(cfg.iterations, f"{stage} ({alg.name})", initial=start, unit="iter")
        plotted = [0.0]  # when the plot was last drawn: at most every PLOT_EVERY_S, and at the end
        extra = measure(trainer, judge_pool, out, start) if measure else None

        def on_iteration(tr, row):
            if extra is not None:
                row.update(extra(row))
            writer.log(row["iteration"], row)
            if time.time() - plotted[0] > PLOT_EVERY_S or row["iteration"] == cfg.iterations:
                plot(tr.history, out / f"{stage}.png")
                plotted[0] = time.time()
            bar.update(1)
            bar.set_postfix(reward=f"{row.get('reward/mean', float('nan')):.3f}",
                            kl=f"{row.get('kl/mean', 0.0):.3f}", refresh=False)
            if row["iteration"] % cfg.checkpoint_every == 0 or row["iteration"] == cfg.iterations:
                tr.save(out / "checkpoints" / f"iter_{row['iteration']}")
                prune(out / "checkpoints", cfg.keep_checkpoints, cfg.keep_policies)

        rows = trainer.run(start, on_iteration)
        bar.close()
        final = checkpoints(out / "checkpoints")[-1]
        shutil.rmtree(out / "model", ignore_errors=True)
        shutil.copytree(final / "policy", out / "model")
        memory = trainer.peak_memory_mb()
    finally:
        writer.close()
        if getattr(extra, "close", None):  # what the measure started for itself
            extra.close()
        if trainer is not None:
            trainer.shutdown()
        for p in (pool, judge_pool):
            if p is not None:
                p.shutdown()
    first, last = rows[0], rows[-1]
    timed = rows[1:] or rows  # the first iteration includes start-up
    return {**({"judge_check": check} if check else {}),
            "algorithm": alg.name, "advantage": alg.advantage, "reward_source": cfg.reward,
            "critic": alg.needs_critic, "reference": alg.needs_reference,
            "iterations": len(rows), "resumed_from": start,
            "reward_first": first.get("reward/mean"), "reward_last": last.get("reward/mean"),
            "kl_first": first.get("kl/mean"), "kl_last": last.get("kl/mean"),
            "mismatch_kl_mean": _mean(rows, "mismatch/kl"),
            **{f"{k}_mean": _mean(timed, k) for k in PHASES + ("timing/iteration_s",)},
            **memory, "mode": "async" if cfg.async_mode else "sync",
            "weight_sync": ctx.job.weight_sync(),
            "model": str(out / "model")}


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return sum(vals) / len(vals) if vals else None


def _resolve(name: str) -> str:
    from cai_ray import models

    return models.resolve(name)


STAGE = register_stage(Stage(
    name="rl", after="dpo",
    about=("the policy is trained by RL against the reward model or the judge, with a KL term to "
           "its start (GRPO, PPO, RLOO, ...)"),
    run=run, sections=("model", "prompts", "rl", "seed"),
    reads=reads, produces=("policy",), outputs=("rl/model/config.json",),
    needs=needs,
    key_figures=("algorithm", "reward_first", "reward_last", "kl_last"),
    check=check,
    instead={"reward_model": "set rl.reward_model, or choose another rl.reward (judge, short, "
                             "module:function)"}))
