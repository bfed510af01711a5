"""`cai-ray eval compare RUN_A RUN_B`: two runs' final policies on the same held-out prompts, with
the eval stage's measures (refusals and over-refusal with intervals, the paired difference, judge
Elo and win rates), so an ablation (two constitutions, DPO against RL) is two runs and one command.

    cai-ray eval compare runs/constitution-a runs/constitution-b [--out DIR]

The prompts, the judge and the eval settings are RUN_A's; both runs must start from the same base
model (one engine pool swaps their weights). Output: DIR/figures.json, answers.jsonl, report.md,
report.html (default DIR: RUN_A/compare-<RUN_B's name>).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("cai_ray")


def compare(ctx, pols, out: Path) -> dict:
    """pols: base, A's final policy, B's; the caller has started Ray."""
    from cai_ray import judges
    from cai_ray.eval import arena as E
    from cai_ray.eval import report
    from cai_ray.rundir.files import write_json_atomic

    job, cfg = ctx.job, ctx.job.eval
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
