"""Stage preferences: AI feedback (Bai et al. 2022 sec. 4.1).

The SL-CAI model samples k answers per red-team prompt; the constitutional judge (the `judge:`
section: the policy itself, a separate feedback model on its own actors, or a server) labels each
pair with a soft probability. Output in
RUN_DIR/preferences/: data/ + data.jsonl with prompt, chosen, rejected, p_chosen, per-principle and
per-order probabilities, judge model and mode; the reward stage trains on it.
"""

from __future__ import annotations

import itertools
import time

from cai_ray.generation import TOO_LONG, Request, Sampling
from cai_ray.judges import JudgeItem, open_judge
from cai_ray.rundir.files import ProgressLog, save_dataset
from cai_ray.stages import resources as R
from cai_ray.stages.base import Stage
from cai_ray.stages.context import Context, model_label
from cai_ray.stages.registry import register_stage


def check(job, constitution, base: str) -> None:
    """Load-time checks, before anything starts: the constitution has what this stage uses."""
    constitution.require("judge", job.constitution.path)
    from cai_ray import judges
    from cai_ray.judges.gate import check_config

    judges.check(job.judge)
    check_config(job.judge)


def needs(job) -> R.Need:
    """The policy's engine actors and, with a separate judge model, the judge's, at once."""
    from cai_ray import judges

    return R.plus(R.engine_need(job.engine),
                  R.engine_need(judges.engine_section(job, separate=False), "judge.engine"))


def reads(job) -> tuple[str, ...]:
    """The artifacts this stage needs (cai_ray/stages/graph.py)."""
    return ("policy",)


def sample_answers(pool, prompts, cfg, seed: int, batch_size: int, max_in_flight: int,
                   on_answers=None) -> dict:
    """k answers per prompt id, sampled on the pool (temperature, top-p from the job);
    on_answers(pid, answers or None) as each prompt's answers arrive (None: prompt too long)."""
    sched = pool.scheduler(Sampling(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                    top_p=cfg.top_p, n=cfg.num_samples, seed=seed),
                           batch_size, max_in_flight)
    for p in prompts:
        sched.put(p.id, Request(p.id, messages=[{"role": "user", "content": p.prompt}]))
    out, t0 = {}, time.time()
    for pid, comps in sched.results():
        ans = [c.text.strip() for c in comps] if comps[0].finish_reason != TOO_LONG else None
        if ans is not None:
            out[pid] = ans
        if on_answers:
            on_answers(pid, ans)
    return out, {**sched.stats, "seconds": time.time() - t0}


def pairs_of(answers: list[str]) -> list[tuple[int, int]]:
    """Distinct, non-identical answer pairs (all combinations of the k samples)."""
    return [(i, j) for i, j in itertools.combinations(range(len(answers)), 2)
            if answers[i].strip() != answers[j].strip()]


ANSWERS = "#answers"  # progress row of a prompt's k sampled answers: pid#answers
NONE = "#none"  # progress row of a prompt whose answers were all identical


def resume_point(log: ProgressLog, prompts) -> tuple[dict, list]:
    """(answers already sampled by prompt id, prompts still to sample). A prompt's answers are
    logged as they arrive and each judged pair on its own (pid#i-j), so a kill loses at most the
    pairs in flight. Logs from before answers were logged: a prompt with any pair is done."""
    answers = {k[:-len(ANSWERS)]: r["answers"] for k, r in log.rows.items()
               if k.endswith(ANSWERS)}
    judged = {k.split("#")[0] for k in log.rows if not k.endswith(ANSWERS)}
    todo = [p for p in prompts if p.id not in answers and p.id not in judged]
    return answers, todo


def pairs_to_judge(log: ProgressLog, answers: dict, by_id: dict) -> list[JudgeItem]:
    """Every distinct pair of every prompt's answers not yet in the log."""
    items = []
    for pid, ans in answers.items():
        if ans is None or pid not in by_id:
            continue
        if not pairs_of(ans):
            if pid + NONE not in log:
                log.add({"id": pid + NONE, "skipped": "identical answers"})
            continue
        conv = [{"role": "user", "content": by_id[pid].prompt}]
        items += [JudgeItem(f"{pid}#{i}-{j}", conv, ans[i], ans[j])
                  for i, j in pairs_of(ans) if f"{pid}#{i}-{j}" not in log]
    return items


def run(ctx: Context) -> dict:
    from cai_ray import judges
    from cai_ray.judges.gate import gate

    cfg, jc, e = ctx.job.preferences, ctx.job.judge, ctx.job.engine
    ctx.constitution.require("judge", ctx.job.constitution.path)
    policy = ctx.policy_model()
    prompts = [p for p in ctx.train_prompts(ctx.red_team.prompts)]
    by_id = {p.id: p for p in prompts}
    t0 = time.time()
    stats, judge_s, n_judged, judge_actors, judge_model = {}, 0.0, 0, 0, None
    pool = setup = log = None

    def judge():
        """The judge, opened once: on the policy's engine actors when it is the policy itself,
        else on its own actors or its server."""
        nonlocal pool, setup
        if setup is None:
            if not jc.model and judges.own_engines(jc) and pool is None:
                pool = ctx.engine_pool(policy, name="policy")
            setup = open_judge(jc, ctx.constitution, default_model=policy, seed=ctx.job.seed,
                               engine=e, judge_engine=ctx.job.judge_engine(),
                               shared_pool=None if jc.model else pool, actors=ctx.judge_pool)
        return setup.judge

    def keep(pid, ans):
        log.add({"id": pid + ANSWERS, "answers": ans})
        answers[pid] = ans

    try:
        # before anything is written or labelled: is the judge better than chance?
        check = gate(judge, jc, ctx.run, judge_model=judges.model_path(jc, policy),
                     constitution=ctx.constitution, stage="preferences")
        out = ctx.run.stage_dir("preferences")
        log = ProgressLog(out / "progress.jsonl")
        answers, todo = resume_point(log, prompts)
        if todo:
            pool = pool or ctx.engine_pool(policy, name="policy")
            _, stats = sample_answers(pool, todo, cfg, ctx.job.seed, e.batch_size,
                                      e.max_in_flight, on_answers=keep)
        items = pairs_to_judge(log, answers, by_id)
        if items:
            if jc.model and pool is not None:  # the judge has its own actors or a server
                pool.shutdown()
                pool = None
            labeller = judge()
            judge_model = setup.model
            tj = time.time()
            bar = ctx.progress(len(items), "judge", unit="pair")
            for chunk in _chunks(items, 16):  # progress and the log advance per chunk
                for it, jd in zip(chunk, labeller.label(chunk)):
                    log.add(_row(it, jd, by_id[it.id.split("#")[0]], judge_model, jc))
                bar.update(len(chunk))
            bar.close()
            judge_s, n_judged, judge_actors = time.time() - tj, len(items), len(setup.pool)
    finally:
        if setup is not None:
            setup.close()
        if pool is not None:
            pool.shutdown()
        if log is not None:
            log.close()
    rows = [r for r in log.rows.values() if "chosen" in r]
    save_dataset(out / "data", rows)
    ps = [r["p_chosen"] for r in rows]
    orders = sum(r["order_disagreements"] for r in rows)
    n_orders = sum(len(r["per_principle"]) for r in rows) if jc.both_orders else 0
    return {**({"judge_check": check} if check else {}),
            "pairs": len(rows), "prompts": len({r["prompt_id"] for r in rows}),
            "p_chosen_mean": sum(ps) / len(ps) if ps else None,
            "order_disagreement": orders / n_orders if n_orders else None,
            "unparsed_verdicts": sum(r.get("unparsed", 0) for r in rows),
            "judge_method": jc.method,
            "judge_model": model_label(judge_model or jc.model or policy),
            "policy_model": model_label(policy),
            "mode": "cot" if jc.chain_of_thought else "direct", "judge_actors": judge_actors,
            "judgements_per_s": n_judged / judge_s if judge_s else None,
            "timing/generate_s": stats.get("seconds"), "timing/judge_s": judge_s,
            "timing/total_s": time.time() - t0, "prompts_sampled_now": len(todo),
            "pairs_judged_now": n_judged, "progress_repeats": log.repeats,
            "actor_failures": stats.get("actor_failures", 0),
            "generated_tokens": stats.get("generated_tokens", 0)}


def _row(it: JudgeItem, jd, prompt, judge_model: str, cfg) -> dict:
    first_better = jd.p_first >= 0.5
    return {"id": it.id, "prompt_id": prompt.id, "prompt": prompt.prompt,
            "chosen": it.first if first_better else it.second,
            "rejected": it.second if first_better else it.first,
            "p_chosen": jd.p_first if first_better else 1.0 - jd.p_first,
            "per_principle": jd.per_principle, "orders": jd.orders,
            "order_disagreements": jd.disagreements, "reasoning": jd.reasoning,
            "judge_model": model_label(judge_model), "judge_method": cfg.method,
            "unparsed": jd.unparsed, "mode": "cot" if cfg.chain_of_thought else "direct"}


def _chunks(xs: list, n: int):
    for k in range(0, len(xs), n):
        yield xs[k:k + n]


STAGE = register_stage(Stage(
    name="preferences", after="sft",
    about=("the policy samples answer pairs; the constitutional judge labels which follows the "
           "principles better (soft labels)"),
    run=run, sections=("model", "constitution", "prompts", "preferences", "judge", "seed"),
    reads=reads, produces=("preferences",), outputs=("preferences/data.jsonl",),
    needs=needs,
    key_figures=("pairs", "p_chosen_mean", "order_disagreement"),
    check=check))
