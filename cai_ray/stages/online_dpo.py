"""The dpo stage's online mode (`dpo.online: true`; Guo et al. 2024, online AI feedback): each
iteration samples k answers per prompt from the current policy on the vLLM engine actors, ranks
them with the judge (judge.ranking: pairwise or groupwise) or any RL reward source
(`dpo.ranker`), turns each prompt's best and worst answer into a DPO pair, takes DPO steps
against the fixed reference, and syncs the new weights to the engines: the rl stage's loop
(stages/rl.train) with the online_dpo algorithm (algos/algorithms.py), so checkpoints, resume,
multi-node learners, LoRA and weight sync are the RL stage's.

After every iteration the policy answers a fixed set of held-out prompts greedily and the judge
compares each answer with the reference's (generated once, before the first update): the win
rate, its interval, the judge's position bias on those verdicts. The stage also logs the DPO
margin and accuracy on the pair, and the KL to the reference (kl/mean).
"""

from __future__ import annotations

from pathlib import Path

from cai_ray.rundir.files import read_jsonl
from cai_ray.stages.context import Context

ROLLOUT_FIELDS = ("num_workers", "use_gpu", "offload_optimizer", "offload_params", "precision",
                  "weight_decay", "warmup_steps", "lr_schedule", "grad_clip", "lora",
                  "gradient_checkpointing", "keep_checkpoints", "placement_strategy", "lr",
                  "max_failures")


def rl_section(job):
    """The dpo section's online settings as the rl stage's section (algorithm online_dpo)."""
    from cai_ray.config.rl import RlCfg

    d = job.dpo
    base = {k: getattr(d, k) for k in ROLLOUT_FIELDS}
    return RlCfg(algorithm="online_dpo", reward=d.ranker, beta=d.beta,
                 iterations=d.iterations, prompts_per_iter=d.prompts_per_iter,
                 samples_per_prompt=d.samples_per_prompt, max_new_tokens=d.max_new_tokens,
                 temperature=d.temperature, micro_batch_size=max(2, d.micro_batch_size),
                 zero_stage=d.zero_stage, checkpoint_every=d.checkpoint_every,
                 keep_policies=0, **base)


def check(job, constitution) -> None:
    """Load-time: the ranker loads (the judge has principles and passes its data checks)."""
    from cai_ray.rewards import check_reward, reward_kind

    cfg = rl_section(job)
    check_reward(cfg.reward, cfg.max_new_tokens)
    if reward_kind(cfg.reward)[0] == "judge" or job.dpo.heldout_prompts:
        from cai_ray import judges
        from cai_ray.judges.gate import check_config

        constitution.require("judge", job.constitution.path)
        judges.check(job.judge)
        check_config(job.judge)


def run(ctx: Context) -> dict:
    from cai_ray.stages import rl

    cfg = rl_section(ctx.job)
    res = rl.train(ctx, cfg, "dpo", measure=lambda tr, jp, out, start: heldout_judge(
        ctx, tr, jp, out, start))
    rows = read_jsonl(ctx.run.path / "dpo" / "metrics.jsonl")
    last = rows[-1] if rows else {}
    return {**res, "online": True, "ranker": cfg.reward,
            **{k: last.get(k) for k in ("heldout/win_rate", "heldout/win_rate_low",
                                        "heldout/win_rate_high", "heldout/position_bias",
                                        "dpo/margin", "dpo/accuracy", "kl/mean")}}


def heldout_judge(ctx: Context, trainer, judge_pool, out: Path, start: int):
    """A function of an iteration's row -> the held-out figures: the current policy's greedy
    answers against the reference's, judged (win rate with its Wilson interval, soft win rate,
    position bias). None when there is no judge to ask or no held-out prompt."""
    from cai_ray import judges
    from cai_ray.algos.ratings import rate
    from cai_ray.judges import JudgeItem
    from cai_ray.stages.rl import greedy, start_answers

    n = ctx.job.dpo.heldout_prompts
    prompts = (ctx.heldout_prompts(ctx.red_team.prompts) +
               ctx.heldout_prompts(ctx.helpful.prompts))[:n]
    if not n or not prompts:
        return None
    jc, sft = ctx.job.judge, ctx.policy_model()
    je = ctx.job.judge_engine() if jc.model else ctx.job.engine
    path = judges.model_path(jc, sft)
    own = None  # the judge's actors, when the ranker is not the judge (this stage's to stop)
    if judge_pool is None and judges.own_engines(jc):
        own = judge_pool = judges.start_actors(jc, default_model=sft, actors=lambda p:
                                               ctx.engine_pool(p, name="judge", engine=je))
    judge = judges.attach(jc, ctx.constitution, pool=judge_pool, model_path=path,
                          seed=ctx.job.seed, batch_size=je.batch_size,
                          max_in_flight=je.max_in_flight)
    refs = start_answers(trainer.pool, prompts, out / "reference_answers.jsonl", start,
                         ctx.job.dpo.max_new_tokens, ctx.job.engine.batch_size)

    def measure(row: dict) -> dict:
        now = greedy(trainer.pool, prompts, ctx.job.dpo.max_new_tokens,
                     ctx.job.engine.batch_size)
        items = [JudgeItem(f"{p.id}@{row['iteration']}", [{"role": "user", "content": p.prompt}],
                           now[p.id], refs[p.id]) for p in prompts if p.id in now]
        jds = judge.label(items)
        wins = rate([j.p_first > 0.5 for j in jds])
        both = sum(len(v) == 2 for j in jds for v in j.orders.values())
        return {"heldout/win_rate": wins["rate"], "heldout/win_rate_low": wins["low"],
                "heldout/win_rate_high": wins["high"],
                "heldout/soft_win_rate": sum(j.p_first for j in jds) / max(len(jds), 1),
                "heldout/changed": sum(now[p.id] != refs[p.id] for p in prompts) / len(prompts),
                "heldout/position_bias": (sum(j.disagreements for j in jds) / both
                                          if both else None)}

    measure.close = own.shutdown if own is not None else None
    return measure
