"""`cai-ray serve`: deploy, report, stop.

    cai-ray serve runs/default                  # the run's newest policy, foreground, Ctrl-C stops
    cai-ray serve runs/default --stage sft --score --judge --port 8001
    cai-ray serve smollm2-135m-instruct         # any registry name or model folder
    cai-ray serve --status | --stop             # from another shell (or --address for a cluster)

Everything the command line can check (target, stage, port, key, resources) is checked before Ray
starts; a bad value is one line and exit 2.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

from cai_ray.cluster import check_answers, is_loopback, ray_token_available
from cai_ray.errors import InputError
from cai_ray.serve import process

APPS = {"policy": ("cai-policy", "/"), "score": ("cai-score", "/v1/score"),
        "judge": ("cai-judge", "/v1/judge")}
KV_KEY = b"cai-ray/serve"


@dataclass
class Plan:
    target: object
    cfg: object
    key: str | None
    on_gpu: bool
    dtype: str
    max_model_len: int


def serve_cfg(target, args):
    """The job's `serve:` section (the run's, else defaults), with the flags over it."""
    from pydantic import ValidationError

    from cai_ray.config.sections import ServeCfg

    base = target.job.serve.model_dump() if target.job is not None else {}
    flags = {"host": args.host, "port": args.port, "min_replicas": args.replicas,
             "max_replicas": args.max_replicas,
             "num_gpus_per_replica": args.gpus_per_replica,
             "tensor_parallel_size": args.tensor_parallel_size, "max_tokens": args.max_tokens,
             "max_n": args.max_n, "read_timeout_s": args.read_timeout,
             "request_timeout_s": args.request_timeout, "ingress": args.ingress,
             "reserved_cpus": args.reserved_cpus,
             "score": args.score or None, "judge": args.judge or None,
             "dashboard": args.dashboard or None}
    data = {**base, **{k: v for k, v in flags.items() if v is not None}}
    if args.replicas and not args.max_replicas:  # --replicas N alone: at least N, job max kept
        data["max_replicas"] = max(data.get("max_replicas", 1), args.replicas)
    try:
        cfg = ServeCfg.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InputError(f"serve.{field}: {first['msg']}") from None
    from cai_ray.serve.ingress import resolve_ingress

    cfg = cfg.model_copy(update={"ingress": resolve_ingress(cfg.ingress)})  # auto -> which
    if cfg.max_request_tokens < cfg.max_tokens:
        raise InputError(f"serve: max_request_tokens {cfg.max_request_tokens} is below max_tokens "
                         f"{cfg.max_tokens} (a request without max_tokens gets max_tokens)")
    if cfg.max_replicas < cfg.min_replicas:
        raise InputError(f"serve: max_replicas {cfg.max_replicas} is below min_replicas "
                         f"{cfg.min_replicas}")
    return cfg


def api_key(args, cfg) -> str | None:
    if args.api_key_file:
        from cai_ray.rundir import readers

        try:
            key = readers.read_text(args.api_key_file, "key", "API key file").strip()
        except InputError as exc:
            raise InputError(f"--api-key-file {exc}") from None
        if not key:
            raise InputError(f"--api-key-file {args.api_key_file}: the file is empty")
        return key
    if args.api_key:
        print("cai-ray serve: --api-key shows in `ps`; prefer --api-key-file or "
              f"${cfg.api_key_env}", file=sys.stderr)
        return args.api_key
    return os.environ.get(cfg.api_key_env) or None


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise InputError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); "
                             f"choose another port, or stop what serves there "
                             f"(`cai-ray serve --stop`)") from None


def check_reserved(cfg) -> None:
    """serve.reserved_cpus binds one replica's model, and must leave it a core."""
    from cai_ray.platform import num_cores

    what = f"serve.reserved_cpus (--reserved-cpus) {cfg.reserved_cpus}"
    if cfg.reserved_cpus and cfg.max_replicas > 1:
        raise InputError(f"{what}: binds the model of a single replica, and max_replicas is "
                         f"{cfg.max_replicas} (several replicas share the cores unbound); "
                         f"set one or the other")
    if cfg.reserved_cpus and cfg.reserved_cpus >= num_cores():
        raise InputError(f"{what}: this machine has {num_cores()} core(s) and the model needs "
                         f"one; use 0-{num_cores() - 1}")


def plan(args) -> Plan:
    from cai_ray.platform import engine_dtype, has_cuda
    from cai_ray.serve.target import resolve_target

    if not args.target:
        raise InputError("serve: give a run directory, a model folder or a registry name "
                         "(or --status / --stop)")
    target = resolve_target(args.target, args.stage, args.name, score=bool(args.score),
                            judge=bool(args.judge))
    cfg = serve_cfg(target, args)
    key = api_key(args, cfg)
    if not is_loopback(cfg.host) and not key:
        raise InputError(f"--host {cfg.host}: not a loopback address, so every route needs an API "
                         f"key; set ${cfg.api_key_env} or give --api-key-file")
    if args.detach and not args.address:
        raise InputError("--detach: needs --address (a cluster that outlives this command); "
                         "without it the server runs in the foreground")
    if not args.address:
        check_port(cfg.host, cfg.port)
    on_gpu = cfg.num_gpus_per_replica > 0 or (not args.address and has_cuda())
    if not on_gpu:
        check_reserved(cfg)
    job = target.job
    dtype, _ = engine_dtype(job.model.dtype if job else "auto")
    max_len = job.model.max_model_len if job else 2048
    return Plan(target, cfg, key, on_gpu, dtype, max_len)


def needed_cpus(cfg) -> float:
    return (cfg.max_replicas * cfg.tensor_parallel_size * cfg.num_cpus_per_replica
            + cfg.scorer_cpus * (cfg.score + cfg.judge))


def connect(address: str | None, cfg=None) -> None:
    """Join the cluster at `address`, or start a local one on 127.0.0.1 big enough (logically)
    for the deployments."""
    from cai_ray.cluster import init_ray
    from cai_ray.platform import num_cores

    if address:
        init_ray(address=address)
        return
    init_ray(num_cpus=max(num_cores(), int(needed_cpus(cfg) + 0.999)) if cfg else None,
             dashboard=cfg.dashboard if cfg else True, autoscaler=False)


def check_resources(cfg, on_gpu: bool) -> None:
    import ray

    have = ray.cluster_resources()
    need_cpu = cfg.min_replicas * cfg.tensor_parallel_size * cfg.num_cpus_per_replica
    need_gpu = (cfg.min_replicas * cfg.tensor_parallel_size * max(cfg.num_gpus_per_replica, 1)
                if on_gpu else 0)
    if have.get("CPU", 0) < need_cpu or have.get("GPU", 0) < need_gpu:
        raise InputError(f"serve: {cfg.min_replicas} replica(s) need {need_cpu:g} CPUs and "
                         f"{need_gpu:g} GPUs; the cluster has {have.get('CPU', 0):g} and "
                         f"{have.get('GPU', 0):g} (lower --replicas or serve.* resources)")


def deploy(p: Plan) -> dict:
    """Start Serve's proxy where the config says and run the applications; returns what was
    deployed (also kept in the cluster's KV store for --status)."""
    import ray
    from ray import serve

    from cai_ray.serve import guard
    from cai_ray.serve.llm import build_policy_app

    cfg, t = p.cfg, p.target
    limits = guard.Limits(guard.key_digest(p.key) if p.key else None, cfg.max_request_bytes,
                          cfg.max_tokens, cfg.max_n, cfg.max_request_tokens, cfg.read_timeout_s)
    serve.start(http_options={"host": cfg.host, "port": cfg.port,
                              "request_timeout_s": cfg.request_timeout_s})
    apps = {"policy": build_policy_app(t, cfg, limits, on_gpu=p.on_gpu,
                                       max_model_len=p.max_model_len, dtype=p.dtype)}
    if cfg.score and t.reward_model:
        from cai_ray.serve.scoring import build_score_app

        apps["score"] = build_score_app(t.reward_model, f"{t.model_id}-reward", limits,
                                        cfg.scorer_cpus, cfg.scorer_gpus)
    if cfg.judge and t.judge:
        from cai_ray.serve.scoring import build_judge_app

        engine_kwargs = {"max_model_len": p.max_model_len, "dtype": p.dtype,
                         "kv_cache_gib": cfg.kv_cache_gib, "seed": t.judge.seed}
        apps["judge"] = build_judge_app(t.judge, f"{t.model_id}-judge", limits, cfg.scorer_cpus,
                                        cfg.scorer_gpus if p.on_gpu else 0, engine_kwargs)
    t0 = time.time()
    from ray.serve.api import RunTarget

    # all at once (serve.run waits for each in turn), then wait for every one to be RUNNING
    quiet = {"log_level": "INFO" if os.environ.get("CAI_RAY_VERBOSE") else "WARNING"}
    serve.run_many([RunTarget(app, name=APPS[k][0], route_prefix=APPS[k][1],
                              logging_config=quiet)
                    for k, app in apps.items()], wait_for_applications_running=False)
    # The ~700,000 objects of this process's imports leave the garbage collector's view (as in
    # Serve's replicas): status polls set off collections of them, 0.75 CPU-s per 20 s (perf)
    gc.collect()
    gc.freeze()
    _wait_running([APPS[k][0] for k in apps])
    info = {"url": f"http://{_url_host(cfg.host)}:{cfg.port}/v1", "model": t.model_id,
            "source": t.source, "stage": t.stage, "path": t.model,
            "routes": ["/v1/models", "/v1/chat/completions", "/v1/completions"]
            + [APPS[k][1] for k in apps if k != "policy"],
            "api_key": bool(p.key), "replicas": [cfg.min_replicas, cfg.max_replicas],
            "ingress": "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "proxy",
            "ready_s": round(time.time() - t0, 1), "apps": [APPS[k][0] for k in apps],
            "ray_address": ray.get_runtime_context().gcs_address}
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(KV_KEY, json.dumps(info).encode(), overwrite=True)
    return info


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _wait_running(names: list[str], timeout_s: float = 900) -> None:
    """serve.run(blocking=False) returns once deployed; readiness is every app RUNNING (the model
    loaded and its health check passed)."""
    from ray import serve

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "MISSING" for n in names}
        bad = {n: s for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if bad:
            msg = "; ".join(f"{n}: {apps[n].message[:400]}" for n in bad if n in apps)
            raise RuntimeError(f"serve: deployment failed: {msg}")
        if all(s == "RUNNING" for s in states.values()):
            return
        time.sleep(1.0)
    raise TimeoutError(f"serve: not ready after {timeout_s:.0f} s: {states}")


def foreground(info: dict, teardown, local: bool = False) -> int:
    """Serve until Ctrl-C, SIGTERM, or `cai-ray serve --stop` (which deletes the applications,
    then the cluster's record of what is served). On a signal, `teardown` ends everything this
    command started; on a cluster it joined (not local) the applications are deleted first, for at
    most SHUTDOWN_S. A local cluster is this command's own and ends with it: asking its Serve to
    stop first only waits on replicas that the same signal may have ended already."""
    from ray import serve
    from ray.experimental import internal_kv

    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    last, asked = 0.0, time.time()
    while not stop:
        time.sleep(0.5)
        if time.time() - last < 2:
            continue
        last = time.time()
        try:
            # the record is one GCS read; Serve's status (its controller's work, and objects for
            # this process to collect) only now and then, for applications deleted another way
            gone = internal_kv._internal_kv_get(KV_KEY) is None
            if not gone and last - asked > 30:
                asked = last
                gone = not any(n in serve.status().applications for n in info["apps"])
        except Exception:  # the cluster went away
            break
        if gone:
            print("cai-ray serve: stopped (--stop)", file=sys.stderr)
            time.sleep(3)  # let the stopping command leave before this cluster goes
            return 0
    print("cai-ray serve: shutting down", file=sys.stderr)
    if not local:
        import threading

        done = threading.Thread(target=serve.shutdown, daemon=True)
        done.start()
        done.join(SHUTDOWN_S)
    teardown(0)
    return 0


SHUTDOWN_S = 20.0


def status(address: str) -> int:
    _attach(address)  # first: it sets how Ray authenticates before Ray is imported
    from ray import serve
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(KV_KEY)
    info = json.loads(raw) if raw else {}
    apps = serve.status().applications
    out = {"serving": info, "applications": {}}
    for kind, (name, prefix) in APPS.items():
        if name not in apps:
            continue
        a = apps[name]
        out["applications"][name] = {
            "status": _name(a.status), "route_prefix": prefix,
            "deployments": {d: {"status": _name(s.status),
                                "replicas": {str(k): v for k, v in s.replica_states.items()}}
                            for d, s in a.deployments.items()}}
    if not out["applications"]:
        print("cai-ray serve: nothing is being served", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


def stop(address: str) -> int:
    _attach(address)  # first: it sets how Ray authenticates before Ray is imported
    from ray import serve
    from ray.experimental import internal_kv

    apps = serve.status().applications
    ours = [name for name, _ in APPS.values() if name in apps]
    for name in ours:
        serve.delete(name)
    internal_kv._internal_kv_del(KV_KEY)  # last: a foreground server ends its cluster on this
    print(f"cai-ray serve: stopped {', '.join(ours) or 'nothing (none running)'}", flush=True)
    sys.stderr.flush()
    # A foreground server ends its local cluster once its applications are gone; leave without
    # Ray's disconnect, which would wait a minute for a cluster that is shutting down.
    os._exit(0)


def _attach(address: str) -> None:
    """--status / --stop: the cluster at --address, or the one this machine's `cai-ray serve`
    started (its record's address)."""
    if ray_token_available():
        # Ray sends its token to a cluster it finds itself, but to a named address only in token
        # mode, which it reads when it is imported: so before `import ray`
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    check_answers(address, hint="is `cai-ray serve` running? (--address)")
    import ray

    from cai_ray.cluster import default_env

    default_env()
    kw = {}
    if "127.0.0.1" in address or "localhost" in address:
        from cai_ray.cluster import loopback_only

        loopback_only()  # the local cluster's node is 127.0.0.1; so is this driver
        kw["_node_ip_address"] = "127.0.0.1"
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, **kw)
    except (ConnectionError, RuntimeError) as exc:
        raise InputError(f"serve: no Ray cluster to ask at {address} "
                         f"({str(exc).splitlines()[0][:120]}); is `cai-ray serve` running?"
                         ) from None


def main(args) -> int:
    if args.status or args.stop:
        address = args.address or our_cluster(args.port)
        if address is None:
            what = "nothing to stop" if args.stop else "nothing is being served"
            print(f"cai-ray serve: {what}: no `cai-ray serve` runs on this machine (give "
                  f"--address for a cluster elsewhere)", file=sys.stderr)
            return 0 if args.stop else 1
        return status(address) if args.status else stop(address)
    p = plan(args)
    workdir = None
    if not args.address:
        from cai_ray.serve.ingress import apply_local_cluster_env

        env = apply_local_cluster_env(p.cfg)
        workdir = env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
    teardown = _owner(p.cfg.port, workdir, local=not args.address, detach=args.detach)
    connect(args.address, p.cfg)
    check_resources(p.cfg, p.on_gpu)
    print(f"cai-ray serve: deploying {p.target.model_id} ({p.target.source}) ...", file=sys.stderr)
    info = deploy(p)
    key_note = "API key required" if p.key else "no API key (loopback only)"
    print(f"cai-ray serve: {info['model']} ({info['source']}, {p.target.model}) ready in "
          f"{info['ready_s']} s at {info['url']}; routes {', '.join(info['routes'])}; "
          f"{key_note}", file=sys.stderr)
    print(json.dumps(info), flush=True)
    if args.detach:
        return 0
    process.write_record(p.cfg.port, {"ray_address": info["ray_address"], "url": info["url"],
                                      "model": info["model"], "local": not args.address})
    return foreground(info, teardown, local=not args.address)


def _owner(port: int, workdir: str | None, *, local: bool, detach: bool):
    """Make this command the owner of what it starts, and return its teardown(code): the record
    removed, on a local cluster every descendant process ended (process.sweep) and HAProxy's
    folder removed, then exit. Until the foreground loop takes over, SIGTERM and SIGINT tear down
    at once; the same happens at a normal exit (atexit, after Ray's own hook)."""
    import atexit
    import shutil

    def cleanup() -> None:
        process.remove_record(port)
        if local:
            process.sweep()
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    def teardown(code: int) -> None:
        cleanup()
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)

    if detach:
        return teardown
    if local:
        process.become_subreaper()
        process.start_guard()
    atexit.register(cleanup)  # before ray.init: runs after Ray's own exit hook
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: teardown(128 + signum))
    return teardown


def our_cluster(port: int | None) -> str | None:
    """The Ray address of the `cai-ray serve` running on this machine (on `port` when given),
    from its record; None when none runs. Never another cluster found on the machine."""
    recs = [r for r in process.live_records() if port is None or r.get("port") == port]
    if len(recs) > 1:
        ports = ", ".join(str(r.get("port")) for r in recs)
        raise InputError(f"serve: several `cai-ray serve` run here (ports {ports}); choose one "
                         f"with --port or --address")
    return recs[0]["ray_address"] if recs else None


def _name(status) -> str:
    return str(getattr(status, "value", status))
