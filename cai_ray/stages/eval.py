"""Stage eval: did the method work? For every policy of the run (base, SFT, the DPO / RL policy and
the RL checkpoints kept), in the order data flows (the instruments are in cai_ray/eval/arena.py):

1. greedy answers from one engine pool whose weights are swapped per policy: the run's held-out
   red-team and helpful prompts, public harmful sets and benign prompts that look harmful;
2. refusal and over-refusal rates (a phrase detector, no judge), each with a 95% interval, the
   final policy's difference from base and each stage's from the one before (paired bootstrap),
   and which stage moved each rate;
3. harmlessness and helpfulness Elo from the judge (Bai et al. 2022), with bootstrap intervals;
4. per-principle attribution of the run's AI feedback and revisions;
5. RUN_DIR/eval/: result.json, figures.json, answers.jsonl, plots, report.md, report.html.

The judge is the run's `judge:` section; with no judge.model the base model judges.
"""

from __future__ import annotations

from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.eval.arena import (
    Policy,
    attribution,
    elo_figures,
    eval_sets,
    play,
    refusal_figures,
    summary,
)
from cai_ray.rundir.files import write_json_atomic
from cai_ray.stages import resources as R
from cai_ray.stages.base import Stage
from cai_ray.stages.context import Context, model_label
from cai_ray.stages.registry import register_stage


def check(job, constitution, base: str) -> None:
    """Load-time checks: the constitution has judge principles, every eval set named exists (a
    default public set that is absent here is skipped with a warning)."""
    from cai_ray.config.sections import EVAL_BENIGN, EVAL_HARMFUL
    from cai_ray.prompts.sources import source_path

    constitution.require("judge", job.constitution.path)
    from cai_ray import judges

    judges.check(job.judge)
    for field, specs, defaults in (("harmful", job.eval.harmful, EVAL_HARMFUL),
                                   ("benign", job.eval.benign, EVAL_BENIGN)):
        for spec in specs:
            path = source_path(spec)
            if path is not None and not path.exists() and spec not in defaults:
                raise InputError(f"eval.{field}: {spec}: {path} not found; fix the path or "
                                 f"drop the set")


def needs(job) -> R.Need:
    """The policy's engine actors and, with a separate judge model, the judge's, at once."""
    from cai_ray import judges

    return R.plus(R.engine_need(job.engine),
                  R.engine_need(judges.engine_section(job, separate=False), "judge.engine"))


def reads(job) -> tuple[str, ...]:
    """The artifacts this stage needs (cai_ray/stages/graph.py)."""
    return ("policy",)


# -- the policies of the run ---------------------------------------------------------------------
def policies(ctx: Context) -> list[Policy]:
    """base, sft, dpo, the RL policies kept (rl@N) and rl: every policy stage of the run directory
    that is complete (also one a changed config would rerun: `cai-ray eval RUN_DIR` rates what
    is there), in the order data flows; the last is the final policy. A job with no policy stage
    rates its start policy."""
    done = {s for s, r in ctx.run.manifest().get("stages", {}).items()
            if r.get("status") == "complete"}
    out = [Policy("base", ctx.base_model, 0)]
    for k, stage in enumerate(("sft", "dpo")):
        if stage in done and ctx.stage_model(stage):
            out.append(Policy(stage, ctx.stage_model(stage), 1 + k))
    if "rl" in done and ctx.stage_model("rl"):
        if ctx.job.eval.checkpoints:
            found = {}
            rl = ctx.run.path / "rl"
            for d in [*rl.glob("policies/iter_*"), *rl.glob("checkpoints/iter_*/policy")]:
                it = int((d if d.name != "policy" else d.parent).name.split("_")[1])
                if it < ctx.job.rl.iterations and (d / "config.json").exists():
                    found[it] = str(d.resolve())
            out += [Policy(f"rl@{it}", found[it], 2 + it) for it in sorted(found)]
        out.append(Policy("rl", ctx.stage_model("rl"), 2 + ctx.job.rl.iterations))
    if len(out) == 1:
        start = ctx.policy_model()
        if Path(start) != Path(ctx.base_model):
            out.append(Policy("policy", start, 1))
    return out


def judge_checks(ctx: Context) -> list[dict]:
    """The judge checks (judge.gate) of this run's earlier stages, from their results."""
    out = []
    for stage in ctx.job.stages:
        if stage != "eval" and (ctx.run.path / stage / "result.json").exists():
            rec = ctx.run.result(stage).get("judge_check")
            if isinstance(rec, dict) and "accuracy_all" in rec:
                out.append(rec)
    return out


# -- the stage ------------------------------------------------------------------------------------
def run(ctx: Context) -> dict:
    from cai_ray import judges

    cfg, jc = ctx.job.eval, ctx.job.judge
    out = ctx.run.stage_dir("eval")
    pols = policies(ctx)
    harmful, benign = eval_sets(ctx)
    red, helpful = harmful["red_team"], benign["helpful"]
    answers, comps_harm, comps_help = play(ctx, pols, harmful, benign, out, "eval")
    refusals = refusal_figures(pols, answers, harmful, benign, cfg.bootstrap, ctx.job.seed)
    elo = {"harmless": elo_figures(pols, comps_harm, cfg.bootstrap, ctx.job.seed),
           "helpful": elo_figures(pols, comps_help, cfg.bootstrap, ctx.job.seed)}
    result = {"policies": [vars(p) for p in pols], "judge": judges.describe(
                  jc, model_label(pols[0].path)), "judge_method": jc.method,
              "prompts": {k: len(v) for k, v in [*harmful.items(), *benign.items()]},
              "refusals": refusals, "elo": elo, "attribution": attribution(ctx.run.path),
              "judge_checks": judge_checks(ctx)}
    write_json_atomic(out / "figures.json", result)
    from cai_ray.eval import report
    from cai_ray.stages import registry

    report.write(out, ctx.run.path, result, pols, answers, red, helpful, cfg.examples,
                 key_figures={s.name: s.key_figures for s in registry.STAGES.values()})
    return summary(result, pols)


STAGE = register_stage(Stage(
    name="eval", after="rl",
    about=("refusal and over-refusal rates with intervals, judge Elo for every policy of the run; "
           "report.html"),
    run=run, sections=("model", "constitution", "prompts", "eval", "judge", "seed"),
    reads=reads, produces=("report",), outputs=("eval/figures.json",),
    needs=needs,
    key_figures=("refusal/harmful/final", "refusal/harmful/base",
                 "refusal/difference/final_vs_base", "refusal/moved_by", "over_refusal/moved_by",
               "over_refusal/xstest/final", "elo/harmless/final", "elo/helpful/final"),
    check=check))
