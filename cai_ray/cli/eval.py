"""`cai-ray eval`: a run directory (its eval stage), or one instrument (judge, reward, refusals),
or two runs compared. Parses and prints; the work is in cai_ray/eval."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.eval.instruments import judge_on_pairs, refusal_labels, reward_accuracy
from cai_ray.judges.quality import DEFAULT_HH, labelled_pairs
from cai_ray.rundir import readers


def main(target: str, argv: list[str]) -> int:
    if target == "refusals":
        return _refusals_main(argv)
    if target == "compare":
        return compare_main(argv)
    if target in ("judge", "reward"):
        return _instrument_main(target, argv)
    return run_dir_main(target)


def run_dir_main(target: str) -> int:
    """`cai-ray eval RUN_DIR`: the eval stage on a run directory as it is."""
    from cai_ray import pipeline
    from cai_ray.config.load import job_from_record
    from cai_ray.rundir.layout import open_run_dir

    run = open_run_dir(target)  # a folder, or a URI: its manifest pulled (exit 2 when the
    manifest = run.path / "manifest.json"  # storage cannot be reached)
    if not manifest.exists():
        raise InputError(f"eval {target}: give `judge`, `reward`, `refusals`, `compare` "
                         f"or a run directory (no {manifest})")
    cfg = run.manifest().get("config")  # InputError for a damaged manifest
    job = job_from_record(cfg, str(manifest), stages=["eval"], run_dir=target)
    summary = pipeline.run(job, quiet=True)
    print(pipeline.format_summary(summary))
    return 1 if summary["eval"]["status"] == "failed" else 0


def compare_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray eval compare")
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--out", help="output folder (default RUN_A/compare-<RUN_B>)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    ctx, pols = _load(Path(args.run_a), Path(args.run_b), args.quiet)
    out = Path(args.out or Path(args.run_a) / f"compare-{Path(args.run_b).resolve().name}")
    from cai_ray.cluster import init_ray
    from cai_ray.eval.compare import compare
    from cai_ray.stages.resources import local_cpus

    job = ctx.job
    init_ray(job.ray.address, local_cpus(job), job.ray.temp_dir)
    result = compare(ctx, pols, out)
    s = result["summary"]
    print(f"{pols[1].name} vs {pols[2].name}: refusal on harmful prompts "
          f"{s['refusal_a']:.3f} vs {s['refusal_b']:.3f} (B - A {s['diff']:+.3f}, 95% CI "
          f"{s['diff_low']:+.3f} to {s['diff_high']:+.3f}); harmlessness win rate of B over A "
          f"{s['harmless_b_over_a']:.3f}; report {out / 'report.html'}")
    return 0


def _load(a: Path, b: Path, quiet: bool):
    from cai_ray.config import JobConfig
    from cai_ray.eval.arena import Policy
    from cai_ray.pipeline import build_context
    from cai_ray.serve.target import resolve_target

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


def _instrument_main(target: str, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"cai-ray eval {target}")
    if target == "reward":
        ap.add_argument("model")
    else:
        ap.add_argument("--job", help="take the judge from this job file's `judge:` section")
        ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a job field, e.g. judge.method=generative")
        ap.add_argument("--model", help="judge model (judge.model; default: the job's judge, "
                        "else its base model)")
        ap.add_argument("--actors", type=int, help="judge engine actors")
        ap.add_argument("--backend", choices=["vllm", "hf"], help="engine backend")
    ap.add_argument("--data", default=str(DEFAULT_HH))
    ap.add_argument("--n", type=int, default=64 if target == "judge" else 256)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.out:
        readers.check_output(args.out, "--out")
    if args.n < 1:
        raise InputError(f"--n {args.n}: give at least 1 pair")
    job = _judge_job(args) if target == "judge" else None
    pairs = labelled_pairs(args.data, args.n)
    if not pairs:
        raise InputError(f"{args.data}: no usable labelled pairs")
    if target == "reward":
        from cai_ray import models

        res = reward_accuracy(models.check(args.model, "--model"), pairs)
        a = res["accuracy"]
        print(f"reward model {args.model}: pairwise accuracy {a['rate']:.3f} (95% CI "
              f"{a['low']:.3f}-{a['high']:.3f}) on {res['pairs']} pairs of {args.data}")
    else:
        res = judge_on_pairs(job, pairs)
        a, f = res["accuracy"], lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"judge {res['judge']}: accuracy {f(a['rate'])} (95% CI {f(a['low'])}-"
              f"{f(a['high'])}) on the {a['n']} of {res['pairs']} pairs of {args.data} it "
              f"decided (ties {res['ties']}); ECE {f(res['ece'])}; position bias "
              f"{f(res['position_bias'])}; unparsed verdicts {res['unparsed_verdicts']}")
        for row in res["calibration"]:
            acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
            print(f"  confidence {row['bucket']}: n={row['n']:4d} accuracy={acc}")
    res["data"] = str(args.data)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _judge_job(args):
    """The job whose `judge:` section is measured (the packaged default job without --job)."""
    from cai_ray.config import load_job

    sets = list(args.set)
    if args.model:
        sets.append(f"judge.model={args.model}")
    if args.actors:
        sets.append(f"engine.num_actors={args.actors}")
    if args.backend:
        sets.append(f"engine.backend={args.backend}")
    return load_job(args.job, sets)


def _print_refusals(res: dict) -> None:
    r = res["refusal"]
    print(f"refusal rate {r['rate']:.3f} ({r['k']}/{r['n']}, 95% CI {r['low']:.3f}-"
          f"{r['high']:.3f}; partial refusals among them {res['partial']['k']}); empty answers "
          f"{res['empty']['k']}; mean answer "
          f"{res['mean_answer_chars']:.0f} chars; labels in {res['labels_written']}")
    s = res.get("against_labels")
    if s:
        f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        three = s.get("three_class_accuracy")
        print(f"against your labels: accuracy {f(s['accuracy'])} precision {f(s['precision'])} "
              f"recall {f(s['recall'])} false-positive rate {f(s['false_positive_rate'])}"
              + (f"; refusal / partial / compliance right {f(three)}" if three is not None
                 else "") + f" (n={s['n']})")


def _refusals_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray eval refusals", description="Label answers "
                                 "with the refusal detector (cai_ray/eval/refusals.py).")
    ap.add_argument("--data", required=True, help="JSONL or CSV with an answer column")
    ap.add_argument("--answer-field", default="answer")
    ap.add_argument("--label-field", help="column with your refusal labels (true/false): adds "
                    "precision, recall and false-positive rate")
    ap.add_argument("--labels-out", help="where each row's label goes (default: next to --data, "
                    ".refusals.jsonl)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    for flag, value in (("--out", args.out), ("--labels-out", args.labels_out)):
        if value:
            readers.check_output(value, flag)
    res = refusal_labels(args.data, args.answer_field, args.label_field, args.labels_out)
    _print_refusals(res)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0
