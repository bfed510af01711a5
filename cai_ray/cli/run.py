"""`cai-ray run`: load the job, check every input, then run its stages (or print the plan with
--dry-run)."""

from __future__ import annotations

import json


def run_command(args) -> int:
    from dataclasses import asdict

    from cai_ray import pipeline
    from cai_ray.config import load_job

    job = load_job(args.job, args.set or [], model=args.model, prompts=args.prompts,
                   limit=args.limit, run_dir=args.run_dir, stages=args.stages)
    ctx = pipeline.build_context(job, quiet=args.quiet or args.dry_run, force=args.force,
                                 resume=args.resume)
    job = ctx.job
    if args.dry_run:
        info = {"job": job.name, "run_dir": job.run_dir, "stages": job.stages,
                "model": ctx.base_model, "constitution": ctx.constitution.name,
                "red_team": len(ctx.red_team), "helpful": len(ctx.helpful),
                "inputs": {s: ctx.plan.inputs.get(s, {}) for s in job.stages},
                "platform": pipeline.platform_record(job)}
        if "rl" in job.stages:  # the algorithm with every knob resolved
            info["rl"] = {**asdict(job.rl.resolved()), "reward": job.rl.reward,
                          "weight_sync": job.weight_sync()}
        print(json.dumps(info, indent=2))
        return 0
    summary = pipeline.run(job, resume=args.resume, force=args.force, quiet=args.quiet, ctx=ctx)
    print(pipeline.format_summary(summary, job.run_dir))
    return 1 if any(s["status"] == "failed" for s in summary.values()) else 0
