"""`cai-ray eval compare RUN_A RUN_B`: two runs' final policies on the same held-out prompts, with
the eval stage's measures (refusals and over-refusal with intervals, the paired difference, judge
Elo and win rates), so an ablation (two constitutions, DPO against RL) is two runs and one command.

    cai-ray eval compare runs/constitution-a runs/constitution-b [--out DIR]

The prompts, the judge and the eval settings are RUN_A's; both runs must start from the same base
model (one engine pool swaps their weights). Output: DIR/figures.json, answers.jsonl, report.md,
report.html (default DIR: RUN_A/compare-<RUN_B's name>).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cai_ray.errors import InputError

log = logging.getLogger("cai_ray")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray eval compare")
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--out", help="output folder (default RUN_A/compare-<RUN_B>)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    ctx, pols = _load(Path(args.run_a), Path(args.run_b), args.quiet)
    out = Path(args.out or Path(args.run_a) / f"compare-{Path(args.run_b).resolve().name}")
    result = compare(ctx, pols, out)
    s = result["summary"]
    print(f"{pols[1].name} vs {pols[2].name}: refusal on harmful prompts "
          f"{s['refusal_a']:.3f} vs {s['refusal_b']:.3f} (B - A {s['diff']:+.3f}, 95% CI "
          f"{s['diff_low']:+.3f} to {s['diff_high']:+.3f}); harmlessness win rate of B over A "
          f"{s['harmless_b_over_a']:.3f}; report {out / 'report.html'}")
    return 0


def _load(a: Path, b: Path, quiet: bool):
    from cai_ray.config import JobConfig
    from cai_ray.pipeline import build_context
    from cai_ray.serve.target import resolve_target
    from cai_ray.stages.eval import Policy

    for run in (a, b):
        if not (run / "manifest.json").exists():
            raise InputError(f"eval compare: {run} is not a run directory (no manifest.json)")
    ta, tb = resolve_target(str(a)), resolve_target(str(b))
    if ta.job.model.name != tb.job.model.name:
        raise InputError(f"eval compare: {a} starts from {ta.job.model.name} and {b} from "
                         f"{tb.job.model.name}; compare runs of the same base model")
    job = JobConfig.model_validate({**ta.job.model_dump(), "stages": ["eval"],
                                    "run_dir": str(a), "start_policy": ta.model})
    ctx = build_context(job, quiet=quiet)
    name_a, name_b = f"A:{a.resolve().name}/{ta.stage}", f"B:{b.resolve().name}/{tb.stage}"
    if name_a == name_b:
        name_b += "'"
    pols = [Policy("base", ctx.base_model, 0), Policy(name_a, ta.model, 1),
            Policy(name_b, tb.model, 2)]
    return ctx, pols


def compare(ctx, pols, out: Path) -> dict:
    from cai_ray import judges, report
    from cai_ray.cluster import init_ray
    from cai_ray.pipeline import local_cpus
    from cai_ray.rundir import write_json_atomic
    from cai_ray.stages import eval as E

    job, cfg = ctx.job, ctx.job.eval
    init_ray(job.ray.address, local_cpus(job), job.ray.temp_dir)
    harmful, benign = E.eval_sets(ctx)
    out.mkdir(parents=True, exist_ok=True)
    answers, comps_harm, comps_help = E.play(ctx, pols, harmful, benign, out, "compare")
    refusals = E.refusal_figures(pols[1:], answers, harmful, benign, cfg.bootstrap, job.seed)
    base_refusals = E.refusal_figures(pols, answers, harmful, benign, cfg.bootstrap, job.seed)
    for name, s in base_refusals["sets"].items():  # every policy's rates, B - A differences
        refusals["sets"][name]["policies"] = s["policies"]
    elo = {"harmless": E.elo_figures(pols, comps_harm, cfg.bootstrap, job.seed),
           "helpful": E.elo_figures(pols, comps_help, cfg.bootstrap, job.seed)}
    allh = refusals["sets"]["all_harmful"]["policies"]
    d = refusals["pooled"]["harmful"]
    win = elo["harmless"]["win_rates"][f"{pols[2].name}_vs_{pols[1].name}"]
    result = {"policies": [vars(p) for p in pols], "judge": judges.describe(
                  job.judge, pols[0].path), "refusals": refusals, "elo": elo, "attribution": [],
              "summary": {"refusal_a": allh[pols[1].name]["rate"],
                          "refusal_b": allh[pols[2].name]["rate"], "diff": d["difference"],
                          "diff_low": d["low"], "diff_high": d["high"],
                          "harmless_b_over_a": win["soft"]["mean"]}}
    E.write_answers(out / "answers.jsonl", pols, answers, harmful, benign)
    write_json_atomic(out / "figures.json", result)
    report.write(out, out, result, pols, answers, harmful["red_team"], benign["helpful"],
                 cfg.examples,
                 title=f"cai-ray comparison: {pols[1].name} against {pols[2].name}")
    return result
