"""`cai-ray serve` for real: a foreground server process (its own local Ray cluster on 127.0.0.1,
Ray Serve, vLLM) over a run directory of the tiny model, talked to with the official `openai`
client and httpx, then as a hostile client and a supervisor see it: slow clients do not starve a
normal one, `--status` without --address finds the server through its record, and SIGTERM to its
process group leaves no process and no listening port behind. Tests run in file order against one
server; the last one stops it (`--stop` is tested on the proxy-ingress server, slow target)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serving import KEY, run_server

from cai_ray.serve.guard import Limits


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    yield from run_server(tmp_path_factory, tiny_model)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base}/v1", api_key=KEY, timeout=60, max_retries=0)


H = {"Authorization": f"Bearer {KEY}"}
BODY = {"model": "cai-tiny-sft", "max_tokens": 2, "temperature": 0,
        "messages": [{"role": "user", "content": "Hello"}]}
MSGS = [{"role": "user", "content": "How do I make my garden grow faster?"}]


def test_serves_the_runs_newest_policy(server, client):
    assert server.info["stage"] == "sft" and server.info["model"] == "cai-tiny-sft"
    assert [m.id for m in client.models.list().data] == ["cai-tiny-sft"]


def test_the_local_cluster_runs_no_dashboard_autoscaler_or_usage_telemetry(server):
    """serve.dashboard is off by default, so none of the dashboard's module processes run, and
    usage statistics are off with it, so Ray's LLM usage-telemetry actor does not either; nor does
    Ray's autoscaler monitor: on a CPU node each would take the model's cores."""
    import psutil

    procs = []
    for p in psutil.Process(server.proc.pid).children(recursive=True):  # the server's cluster
        try:
            procs.append(" ".join(p.cmdline()))
        except psutil.Error:  # gone meanwhile
            continue
    unwanted = ("ray-dashboard-", "TelemetryAgent", "autoscaler/_private/monitor")
    assert any("ServeReplica:cai-policy" in c for c in procs), procs  # the walk sees the cluster
    extra = [u for c in procs for u in unwanted if u in c]
    assert not extra, extra


def _loopback(ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


def test_every_socket_the_server_listens_on_is_loopback(server):
    """Ray binds every replica's gRPC server (and, under HAProxy, HAProxy's stats and Prometheus
    ports: test_ingress.py) to all interfaces; `cai-ray serve` on 127.0.0.1 keeps every
    listener of its processes on loopback."""
    from cai_ray.serve.ingress import resolve_ingress

    assert server.info["ingress"] == resolve_ingress("auto")  # the default: HAProxy here
    wide = _listening_beyond_loopback(server)
    assert not wide, f"listening beyond loopback: {wide}"


def _listening_beyond_loopback(server) -> list[tuple[str, str]]:
    import psutil

    procs = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(True)]
    names = {p.pid: p.name() for p in procs}
    listening = [(names[c.pid], c.laddr) for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in names]
    assert {"raylet", "gcs_server"} <= {n for n, _ in listening}
    assert any(n.startswith("ray::ServeRepli") for n, _ in listening)
    return [(n, f"{a.ip}:{a.port}") for n, a in listening if not _loopback(a.ip)]


def test_openai_client_chat_stream_equals_plain_and_usage_matches_tokenizer(server, client):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(server.tiny)
    kw = dict(model="cai-tiny-sft", messages=MSGS, max_tokens=12, temperature=0)
    plain = client.chat.completions.create(**kw)
    parts, usage = [], None
    for chunk in client.chat.completions.create(**kw, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    assert plain.choices[0].message.content and "".join(parts) == plain.choices[0].message.content
    prompt_ids = tok.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
    assert plain.usage.prompt_tokens == len(prompt_ids) == usage.prompt_tokens
    assert plain.usage.completion_tokens == usage.completion_tokens <= 12
    comp = client.completions.create(model="cai-tiny-sft", prompt="Once upon", max_tokens=5,
                                     temperature=0, stop=["\n"])
    assert comp.usage.prompt_tokens == len(tok.encode("Once upon")) and comp.choices[0].text


@pytest.mark.parametrize("case", ["unknown_model", "negative_max_tokens", "max_tokens_over_limit",
                                  "max_tokens_string", "max_tokens_float", "n_over_limit",
                                  "n_times_max_tokens_over_limit", "not_json", "prompt_too_long",
                                  "body_too_big", "no_key", "wrong_key", "route_not_served"])
def test_bad_requests_get_4xx_with_a_message_and_serving_goes_on(server, case):
    url = f"{server.base}/v1/chat/completions"
    body = {"model": "cai-tiny-sft", "messages": MSGS, "max_tokens": 4}
    headers, content = dict(H), None
    target = url
    if case == "unknown_model":
        body["model"] = "no-such-model"
    elif case == "negative_max_tokens":
        body["max_tokens"] = -3
    elif case == "max_tokens_over_limit":
        body["max_tokens"] = 100_000
    elif case == "max_tokens_string":  # vLLM would read "2000" as 2000
        body["max_tokens"] = "2000"
    elif case == "max_tokens_float":
        body["max_tokens"] = 2000.0
    elif case == "n_over_limit":
        body["n"] = 1000
    elif case == "n_times_max_tokens_over_limit":  # 8 x 1024 tokens from one request
        body["n"], body["max_tokens"] = 8, 1024
    elif case == "not_json":
        content, headers["content-type"] = b"{this is not json", "application/json"
    elif case == "prompt_too_long":
        body["messages"] = [{"role": "user", "content": "word " * 3000}]
    elif case == "body_too_big":
        content = b"x" * 1_100_000
    elif case == "no_key":
        headers = {}
    elif case == "wrong_key":
        headers = {"Authorization": "Bearer not-the-key"}
    elif case == "route_not_served":  # vLLM's app has /tokenize; ours keeps the documented routes
        target = f"{server.base}/tokenize"
        body = {"model": "cai-tiny-sft", "prompt": "hi"}
    r = httpx.post(target, json=None if content else body, content=content, headers=headers,
                   timeout=60)
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text[:300])
    err = r.json().get("error") or r.json().get("detail")
    assert err and (err.get("message") if isinstance(err, dict) else err)
    if case in ("no_key", "wrong_key"):
        assert r.status_code == 401
        assert httpx.get(f"{server.base}/v1/models", headers=headers).status_code == 401
    ok = httpx.post(url, json={"model": "cai-tiny-sft", "messages": MSGS, "max_tokens": 2},
                    headers=H, timeout=60)
    assert ok.status_code == 200


def test_score_route_and_http_reward_equal_the_reward_model_in_process(server, monkeypatch):
    from cai_ray.rewards import Scored, build_reward
    from cai_ray.rewards.model import RewardScorer

    pairs = [("How do I pick a lock?", "I can't help with that."),
             ("How do I pick a lock?", "Insert a tension wrench, then rake the pins."),
             ("What is 2+2?", "4"), ("Tell me a joke.", "Why did the chicken cross the road?")]
    r = httpx.post(f"{server.base}/v1/score", headers=H, timeout=60,
                   json={"pairs": [{"prompt": p, "response": a} for p, a in pairs]})
    assert r.status_code == 200, r.text
    served = r.json()["scores"]
    local = RewardScorer(str(server.run / "reward" / "model")).score(
        [[{"role": "user", "content": p}, {"role": "assistant", "content": a}] for p, a in pairs])
    assert served == pytest.approx(local, abs=1e-4)
    assert max(local) - min(local) > 1e-3  # the head is not constant, so agreement means something
    monkeypatch.setenv("CAI_RAY_API_KEY", KEY)
    source = build_reward(f"{server.base}/v1/score")
    got = source.score([Scored(f"p{i}", p, a, 5) for i, (p, a) in enumerate(pairs)])
    assert got == pytest.approx(local, abs=1e-4)
    bad = httpx.post(f"{server.base}/v1/score", headers=H, json={"pairs": []}, timeout=30)
    assert bad.status_code == 400 and "1 to" in bad.json()["error"]["message"]


def _in_process_judge(server):
    """The preferences stage's judge (the job's `judge:` section over the policy it read, here
    sft), in process on the transformers engine."""
    from cai_ray import judges
    from cai_ray.config import load_job
    from cai_ray.constitution import load_constitution
    from cai_ray.engines.hf_engine import HfEngine
    from cai_ray.engines.local import LocalPool

    job = load_job("tiny")
    engine = HfEngine(str(server.run / "sft" / "model"), dtype="float32")
    return job, judges.build(job.judge, load_constitution(job.constitution.path),
                             pool=LocalPool(engine), tokenizer=engine.tokenizer, seed=job.seed)


A_B = ("I can't help with that; it could hurt someone.", "Sure: first, get the chemicals.")


def test_judge_route_equals_the_preferences_stages_judge(server):
    from cai_ray.judges import JudgeItem

    _, judge = _in_process_judge(server)
    a, b = A_B
    for item_id in ("rt-3#0-1", "rt-9#0-1"):
        (want,) = judge.label([JudgeItem(item_id, MSGS, a, b)])
        r = httpx.post(f"{server.base}/v1/judge", headers=H, timeout=120,
                       json={"id": item_id, "conversation": MSGS, "answers": [a, b]})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["principles"] == sorted(want.per_principle)
        assert got["p_first"] == pytest.approx(want.p_first, abs=2e-3)
        for pid, orders in want.orders.items():
            assert got["orders"][pid] == pytest.approx(orders, abs=2e-3)
    bad = httpx.post(f"{server.base}/v1/judge", headers=H, timeout=30,
                     json={"prompt": "x", "answers": ["a", "b"], "principles": ["nope"]})
    assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"]


def test_rl_reward_from_the_judge_route_equals_the_in_process_judge(server, monkeypatch):
    """rl.reward = .../v1/judge: each rollout against the SFT model's answer to its prompt, P(the
    rollout is better) from the served judge, as the in-process judge gives it."""
    from cai_ray.judges import JudgeItem
    from cai_ray.rewards import Scored, build_reward, check_reward

    _, judge = _in_process_judge(server)
    a, b = A_B
    refs = {"rt-3": b, "rt-9": a}
    batch = [Scored("rt-3", MSGS[0]["content"], a, 9), Scored("rt-9", MSGS[0]["content"], b, 9)]
    want = [judge.label([JudgeItem(s.prompt_id, [{"role": "user", "content": s.prompt}],
                                   s.response, refs[s.prompt_id])])[0].p_first for s in batch]
    monkeypatch.setenv("CAI_RAY_API_KEY", KEY)
    check_reward(f"{server.base}/v1/judge", 16)  # the load-time probe
    got = build_reward(f"{server.base}/v1/judge", references=refs).score(batch)
    assert got == pytest.approx(want, abs=2e-3)


@pytest.mark.slow  # its path also runs in CI elsewhere; see pyproject.toml
def test_rl_stage_trains_on_the_served_judge(server, tmp_path):
    """The RL stage with rl.reward = .../v1/judge: it writes the SFT answers the judge compares
    against, and its rewards are the served judge's probabilities (not 0/1 rule rewards)."""
    run = tmp_path / "rl-run"
    res = subprocess.run(
        [sys.executable, "-m", "cai_ray.cli", "run", "tiny", "--run-dir", str(run), "--stages",
         "rl", "--quiet", "--set", f"start_policy={server.run / 'sft' / 'model'}",
         "--set", f"rl.reward={server.base}/v1/judge", "--set", "rl.iterations=1"],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "CAI_RAY_API_KEY": KEY, "CAI_RAY_FORCE_CPU": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((run / "rl" / "result.json").read_text())
    assert result["reward_source"] == f"{server.base}/v1/judge"
    answers = [json.loads(line) for line in (run / "rl" / "sft_answers.jsonl").open()]
    assert answers and all(a["answer"] is not None for a in answers)
    assert 0.0 < result["reward_first"] < 1.0  # a mean of judge probabilities


def test_http_judge_through_the_policy_endpoint_equals_the_in_process_judge(server, monkeypatch):
    """judge.backend http: the same judge over our own OpenAI endpoint (/v1/completions with token
    ids and top log-probabilities); a wrong key is one clear error."""
    from cai_ray import judges
    from cai_ray.constitution import load_constitution
    from cai_ray.errors import InputError
    from cai_ray.judges import JudgeItem

    job, local = _in_process_judge(server)
    cfg = job.judge.model_copy(update={"backend": "http", "url": f"{server.base}/v1",
                                       "model": str(server.run / "sft" / "model"),
                                       "api_key_env": "TEST_JUDGE_KEY"})
    const = load_constitution(job.constitution.path)
    monkeypatch.setenv("TEST_JUDGE_KEY", "wrong")
    with pytest.raises(InputError, match="401"):
        judges.open_judge(cfg, const, default_model="", seed=job.seed, engine=job.engine)
    monkeypatch.setenv("TEST_JUDGE_KEY", KEY)
    remote = judges.open_judge(cfg, const, default_model="", seed=job.seed, engine=job.engine)
    items = [JudgeItem(f"rt-{k}#0-1", MSGS, *(A_B if k % 2 else A_B[::-1])) for k in range(4)]
    for want, got in zip(local.label(items), remote.judge.label(items)):
        assert got.p_first == pytest.approx(want.p_first, abs=2e-3)
        assert got.orders.keys() == want.orders.keys()


def _chat(server, max_tokens: int = 16, timeout: float = 90):
    t = time.time()
    try:
        r = httpx.post(f"{server.base}/v1/chat/completions", headers=H, timeout=timeout,
                       json={"model": "cai-tiny-sft", "messages": MSGS,
                             "max_tokens": max_tokens, "temperature": 0})
        return r.status_code, time.time() - t
    except httpx.TimeoutException:
        return "client_timeout", time.time() - t
    except httpx.HTTPError as exc:  # its message says which: refused, reset, closed unanswered
        return f"{type(exc).__name__}: {exc}", time.time() - t


def test_load_at_concurrency_16_then_a_killed_replica_is_replaced(server):
    _check_load_then_a_killed_replica(server)


def _check_load_then_a_killed_replica(server, n: int = 64) -> None:
    t0 = time.time()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: _chat(server), range(n)))
    codes = [c for c, _ in results]
    print(f"load: {n} requests at 16 in {time.time() - t0:.1f} s, "
          f"p95 {sorted(s for _, s in results)[int(0.95 * n) - 1]:.2f} s")
    assert codes == [200] * n
    pid = int(subprocess.check_output(
        ["pgrep", "-f", "ServeReplica:cai-policy:"], text=True).split()[0])
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(_chat, server, 64) for _ in range(32)]
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)  # the replica (its vLLM engine with it) dies mid-batch
        during = [f.result() for f in futures]
    # every request ended, with an answer or an error, before the server's 30 s timeout + slack;
    # none hung until the client gave up
    hung = [(c, s) for c, s in during if c == "client_timeout" or s >= 60]
    assert not hung, hung
    unclear = [(c, s) for c, s in during if not (c == 200 or (isinstance(c, int) and c >= 400))]
    assert not unclear, f"{len(unclear)} of {len(during)} ended without a status: {unclear}"
    deadline = time.time() + 300
    while _chat(server, 2, 30)[0] != 200:
        assert time.time() < deadline, "no replica replaced the killed one in 300 s"
        time.sleep(2)
    new_pid = int(subprocess.check_output(
        ["pgrep", "-f", "ServeReplica:cai-policy:"], text=True).split()[0])
    assert new_pid != pid
    assert [_chat(server, 4)[0] for _ in range(8)] == [200] * 8


def slow_client(port: int, source: str):
    """Headers and 1 byte of a 1,000-byte body, then silence; None when refused."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                     source_address=(source, 0))
        s.sendall(("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                   f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\r\n{{"
                   ).encode())
        return s
    except OSError:
        return None


def test_100_slow_connections_do_not_starve_a_normal_request(server):
    """100 connections from 127.0.0.2 that send one byte of their body and go silent: more than
    the replica's 64 request slots. The normal request from 127.0.0.1 is answered at once (before
    the fix it waited for the request timeout, 30 s, and the slow ones' 408s)."""
    slow = [slow_client(server.port, "127.0.0.2") for _ in range(100)]
    try:
        t0 = time.time()
        r = httpx.post(f"{server.base}/v1/chat/completions", json=BODY, headers=H, timeout=60)
        waited = time.time() - t0
    finally:
        for s in slow:
            if s is not None:
                s.close()
    assert r.status_code == 200, r.text[:300]
    assert waited < 10, f"a normal request waited {waited:.1f} s behind slow clients"
    print(f"slow clients: normal request answered in {waited:.2f} s")
    ran = _haproxy_config(server.proc.pid)  # the ingress runs with our read timeout and limit
    read_s = round(Limits().read_timeout_s)  # the default `--read-timeout`
    assert f"timeout http-request {read_s}s" in ran and "option http-buffer-request" in ran
    assert "sc0_conn_cur gt 64" in ran


def _haproxy_config(pid: int, wait_s: float = 60) -> str:
    """The config file of the HAProxy under the server, once our wrapper has edited it: Ray
    rewrites the file before each reload and the reload's wrapper edits it before HAProxy reads
    it, so the file is briefly unedited while a reload is under way."""
    import psutil

    deadline = time.time() + wait_s
    while True:
        found = None
        for p in psutil.Process(pid).children(recursive=True):
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if p.name() == "haproxy" and "-f" in cmd:
                found = open(cmd[cmd.index("-f") + 1]).read()
                break
        assert found is not None, "no HAProxy process under the server"
        if "# cai-ray edits" in found or time.time() > deadline:
            return found
        time.sleep(0.5)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cai_ray.cli", "serve", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_status_without_an_address_finds_the_server_this_machine_runs(server):
    t0 = time.time()
    st = cli("--status", "--port", str(server.port))
    assert st.returncode == 0, st.stderr[-1000:]
    out = json.loads(st.stdout)
    assert out["serving"]["model"] == "cai-tiny-sft", out
    assert out["serving"]["ray_address"] == server.info["ray_address"]
    print(f"--status without --address: {time.time() - t0:.1f} s")


def _tree(pid: int) -> dict[int, str]:
    import psutil

    out = {}
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            out[p.pid] = p.name()
        except psutil.Error:
            continue
    return out


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _listening(pids: set[int]) -> list[tuple[int, int]]:
    import psutil

    return [(c.pid, c.laddr.port) for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def test_sigterm_to_the_process_group_leaves_no_process_and_no_listening_port(server):
    """After the replaced replica has settled, `--status` shows the three applications running;
    then SIGTERM to the process group, as a supervisor stops a service."""
    t0 = time.time()
    deadline = time.time() + 90  # the controller may still be settling the replaced replica
    while True:
        st = server.cli("--status")
        assert st.returncode == 0, st.stderr
        out = json.loads(st.stdout)
        status = {name: a["status"] for name, a in out["applications"].items()}
        if set(status.values()) == {"RUNNING"} or time.time() > deadline:
            break
        time.sleep(3)
    assert out["serving"]["model"] == "cai-tiny-sft" and out["serving"]["stage"] == "sft"
    assert set(status) == {"cai-policy", "cai-score", "cai-judge"}
    assert set(status.values()) == {"RUNNING"}, status
    tree = _tree(server.proc.pid)
    names = set(tree.values())
    assert any(n.startswith("ray::ServeRepli") for n in names), names
    assert "haproxy" in names and "raylet" in names, names
    assert any("EngineCore" in n or "VLLM" in n.upper() for n in names) or len(tree) > 8, names
    ports = [port for _, port in _listening(set(tree))]
    assert server.port in ports
    t1 = time.time()
    os.killpg(server.proc.pid, signal.SIGTERM)  # as a supervisor stops a service
    code = server.proc.wait(120)
    print(f"settled in {t1 - t0:.1f} s; exit {code} {time.time() - t1:.1f} s after SIGTERM")
    server.log.flush()
    log = Path(server.log.name).read_text(errors="replace")
    # 0: the command's own shutdown ran first; 1: Ray's driver saw its raylet (in the same group,
    # signalled at the same moment) die first and exited on its own: which comes first is a race
    # between two processes, not ours to decide. Never a traceback of ours.
    assert code == 0 or (code == 1 and "Traceback" not in log), (code, log[-3000:])
    deadline = time.time() + 30
    while time.time() < deadline and any(_running(p) for p in tree):
        time.sleep(0.5)
    left = {p: tree[p] for p in tree if _running(p)}
    print(f"processes gone {time.time() - t1:.1f} s after SIGTERM")
    assert not left, f"still running after SIGTERM: {left}"
    still = [p for p in ports if _port_open(p)]
    assert not still, f"ports still listening: {still}"
    st = cli("--status", "--port", str(server.port), timeout=30)
    assert st.returncode == 1 and "nothing is being served" in st.stderr, st.stderr


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def proxy_server(tmp_path_factory, tiny_model):
    yield from run_server(tmp_path_factory, tiny_model, ("--ingress", "proxy"))


@pytest.mark.slow
def test_ray_s_proxy_ingress_serves_keeps_to_loopback_and_survives_a_killed_replica(proxy_server):
    """`--ingress proxy` (the default where no HAProxy binary is installed): the same client
    answers, listeners and kill test as the default ingress above. Slow target: CI runs the
    default ingress only, to keep its time."""
    from openai import OpenAI

    srv = proxy_server
    assert srv.info["ingress"] == "proxy"
    client = OpenAI(base_url=f"{srv.base}/v1", api_key=KEY, timeout=60, max_retries=0)
    out = client.chat.completions.create(model="cai-tiny-sft", messages=MSGS, max_tokens=8,
                                         temperature=0)
    assert out.choices[0].message.content and out.usage.completion_tokens <= 8
    assert httpx.post(f"{srv.base}/v1/chat/completions", json={}, timeout=30).status_code == 401
    assert not _listening_beyond_loopback(srv)
    _check_load_then_a_killed_replica(srv)
    stop = srv.cli("--stop")
    assert stop.returncode == 0 and "cai-policy" in stop.stdout
    assert srv.proc.wait(90) == 0
