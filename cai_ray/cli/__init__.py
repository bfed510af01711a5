"""The command line: `cai-ray run | eval | serve | submit | jobs | models | constitution | bench`.
Parses, validates, dispatches; nothing else (run.py, eval.py, jobs.py hold the longer commands).

Exit codes: 0 success, 2 bad input or configuration (one line on stderr naming the field, file or
line), 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys

from cai_ray.errors import InputError
from cai_ray.tracking import console


def _run(args) -> int:
    from cai_ray.cli.run import run_command

    return run_command(args)


def _constitution(args) -> int:
    from cai_ray.constitution import load_constitution, summary

    c = load_constitution(args.file)
    if args.action == "validate":
        print(f"{args.file}: ok ({len(c.critique_revision)} critique/revision pairs, "
              f"{len(c.judge)} judge principles, {len(c.critique_fewshot)} + "
              f"{len(c.judge_fewshot)} few-shot examples; digest {c.digest()})")
    else:
        print(summary(c))
    return 0


def _models(args) -> int:
    from cai_ray import models

    if args.action == "list":
        for row in models.list_models():
            mark = "prepared" if row["prepared"] else "not prepared"
            print(f"{row['name']:24s} {mark:13s} {row['description']}")
        return 0
    if not args.name:
        raise InputError("models prepare: give a model NAME (see `cai-ray models list`)")
    print(models.resolve(args.name))
    return 0


def _bench(args) -> int:
    import importlib

    mod = importlib.import_module(f"cai_ray.bench.{'rl' if args.what == 'ppo' else args.what}")
    return mod.main(args.rest)


def _eval(args) -> int:
    from cai_ray.cli.eval import main

    return main(args.target, args.rest)


def _submit(args) -> int:
    from cai_ray.cli.jobs import submit

    bad = [kv for kv in args.env or [] if "=" not in kv or kv.startswith("=")]
    if bad:
        raise InputError(f"--env {bad[0]}: give KEY=VALUE (for example --env HF_HOME=/data/hf)")
    env = dict(kv.split("=", 1) for kv in args.env or [])
    rest = args.run_args
    status = submit(args.job, args.address, rest, follow=args.follow, token=args.token,
                    token_file=args.token_file, env=env, submission_id=args.submission_id,
                    insecure=args.insecure)
    return 0 if not args.follow or status == "SUCCEEDED" else 1


def _jobs(args) -> int:
    from cai_ray.cli.jobs import jobs_command

    return jobs_command(args.action, args.address, args.id, args.token, args.token_file,
                        args.insecure)


def _serve(args) -> int:
    from cai_ray.serve.command import main

    return main(args)


def _stages():
    from cai_ray.stages import registry

    return registry.STAGES.values()


def _auth_args(p) -> None:
    p.add_argument("--address", help="the cluster's Ray dashboard / Jobs API, e.g. "
                   "http://127.0.0.1:8265 (else $RAY_API_SERVER_ADDRESS; never guessed)")
    p.add_argument("--token", help="Ray auth token (else RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    p.add_argument("--token-file", help="file holding the Ray auth token")
    p.add_argument("--insecure", action="store_true", help="allow the token over plain http to "
                   "another machine")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cai-ray", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the pipeline (default: the packaged job, every stage)")
    r.add_argument("job", nargs="?", help="job YAML (default: the packaged default job; "
                   "'tiny' names the packaged tiny job)")
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a job field (repeatable)")
    r.add_argument("--model", help="model name or folder (model.name)")
    r.add_argument("--prompts", help="red-team prompt source (prompts.red_team)")
    r.add_argument("--limit", type=int, help="at most N prompts (prompts.limit)")
    r.add_argument("--run-dir", help="run directory (run_dir)")
    r.add_argument("--stages", help="comma-separated stages, run in the order data flows: "
                   + "; ".join(f"{s.name}: {s.about}" for s in _stages())
                   + " (ppo: the old name of rl)")
    r.add_argument("--resume", action="store_true", help="skip stages already complete")
    r.add_argument("--force", action="store_true", help="reuse a run directory of another job")
    r.add_argument("--dry-run", action="store_true", help="validate and load inputs, then stop")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(fn=_run)

    c = sub.add_parser("constitution", help="validate or show a constitution")
    c.add_argument("action", choices=["validate", "show"])
    c.add_argument("file")
    c.set_defaults(fn=_constitution)

    m = sub.add_parser("models", help="list or prepare models")
    m.add_argument("action", choices=["list", "prepare"])
    m.add_argument("name", nargs="?")
    m.set_defaults(fn=_models)

    b = sub.add_parser("bench", help="benchmarks (JSON + table)")
    b.add_argument("what", choices=["generation", "sl_cai", "train", "judge", "rl", "ppo",
                                      "online_dpo", "serve", "precision"],
                   help="ppo: the old name of rl")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(fn=_bench)

    s = sub.add_parser("submit", help="submit a job file to a Ray cluster (Jobs API)")
    s.add_argument("job", help="job YAML inside the project folder, or a packaged job name")
    _auth_args(s)
    s.add_argument("--follow", action="store_true", help="stream the logs until the job ends")
    s.add_argument("--env", action="append", metavar="KEY=VALUE")
    s.add_argument("--submission-id")
    s.epilog = "Flags for `cai-ray run` on the cluster follow a `--`."
    s.set_defaults(fn=_submit)

    j = sub.add_parser("jobs", help="list, follow, show logs of, or stop submitted jobs")
    j.add_argument("action", choices=["list", "logs", "stop", "follow"])
    j.add_argument("id", nargs="?")
    _auth_args(j)
    j.set_defaults(fn=_jobs)

    v = sub.add_parser("serve", help="serve a run's policy (OpenAI API), reward model and judge "
                       "on Ray Serve")
    v.add_argument("target", nargs="?", help="run directory, model folder or registry name")
    v.add_argument("--stage", help="which policy of the run: sft, dpo, rl or base (default: the "
                   "newest complete one)")
    v.add_argument("--name", help="the model id clients use (default: JOB-STAGE)")
    v.add_argument("--host", help="listen address (serve.host, default 127.0.0.1)")
    v.add_argument("--port", type=int, help="listen port (serve.port, default 8000)")
    v.add_argument("--replicas", type=int, help="policy replicas (serve.min_replicas)")
    v.add_argument("--max-replicas", type=int, help="autoscaling bound (serve.max_replicas)")
    v.add_argument("--gpus-per-replica", type=float, help="serve.num_gpus_per_replica")
    v.add_argument("--tensor-parallel-size", type=int, help="serve.tensor_parallel_size")
    v.add_argument("--max-tokens", type=int, help="largest max_tokens a request may ask")
    v.add_argument("--max-n", type=int, help="largest n a request may ask (serve.max_n)")
    v.add_argument("--read-timeout", type=float, help="seconds a client has to send its request "
                   "(serve.read_timeout_s, default 10)")
    v.add_argument("--request-timeout", type=float, help="seconds before a request gets 408 "
                   "(serve.request_timeout_s, default 300)")
    v.add_argument("--ingress", choices=["auto", "proxy", "haproxy"], help="how HTTP reaches "
                   "the replicas of a local cluster (serve.ingress; default auto: HAProxy where "
                   "installed, else Ray's proxy)")
    v.add_argument("--reserved-cpus", type=int, help="on CPU, cores kept off the model for "
                   "Ray's processes and the HTTP path (serve.reserved_cpus, default 0)")
    v.add_argument("--dashboard", action="store_true", help="start Ray's dashboard with a local "
                   "cluster (serve.dashboard; off by default: it takes the model's cores)")
    v.add_argument("--score", action="store_true", help="also serve the reward model at /v1/score")
    v.add_argument("--judge", action="store_true", help="also serve the judge at /v1/judge")
    v.add_argument("--api-key-file", help="file holding the API key (else $CAI_RAY_API_KEY)")
    v.add_argument("--api-key", help="the API key (shows in `ps`: prefer --api-key-file)")
    v.add_argument("--address", help="deploy to / ask this Ray cluster (default: a local one)")
    v.add_argument("--detach", action="store_true", help="return once ready (needs --address)")
    v.add_argument("--status", action="store_true", help="what is being served")
    v.add_argument("--stop", action="store_true", help="stop what `cai-ray serve` deployed")
    v.set_defaults(fn=_serve)

    e = sub.add_parser("eval", help="evaluate a run, the judge, a reward model or refusals")
    e.add_argument("target", help="RUN_DIR | judge | reward | refusals | compare")
    e.add_argument("rest", nargs=argparse.REMAINDER)
    e.set_defaults(fn=_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args: list[str] = []
    if argv and argv[0] == "submit" and "--" in argv:  # `submit JOB [opts] -- RUN FLAGS`
        cut = argv.index("--")
        argv, run_args = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    args.run_args = run_args
    console.setup(args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.fn(args) or 0
    except InputError as exc:
        print(f"cai-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cai-ray: interrupted", file=sys.stderr)
        return 130

