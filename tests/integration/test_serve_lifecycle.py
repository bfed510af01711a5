"""`cai-ray serve` as a hostile client and a supervisor see it, on a server of its own (policy
only): slow clients do not starve a normal one, `--status` without --address finds this server
through its record, and SIGTERM to the server's process group leaves no process and no listening
port behind (replicas, vLLM's engine-core processes, HAProxy, Ray's own). Tests run in file order;
the last one stops the server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from serving import KEY, run_server

H = {"Authorization": f"Bearer {KEY}"}
BODY = {"model": "cai-tiny-sft", "max_tokens": 2, "temperature": 0,
        "messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture(scope="module")
def lean(tmp_path_factory, tiny_model):
    yield from run_server(tmp_path_factory, tiny_model, ("--read-timeout", "3"))


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


def test_100_slow_connections_do_not_starve_a_normal_request(lean):
    """100 connections from 127.0.0.2 that send one byte of their body and go silent: more than
    the replica's 64 request slots. The normal request from 127.0.0.1 is answered at once (before
    the fix it waited for the request timeout, 30 s here, and the slow ones' 408s)."""
    slow = [slow_client(lean.port, "127.0.0.2") for _ in range(100)]
    try:
        t0 = time.time()
        r = httpx.post(f"{lean.base}/v1/chat/completions", json=BODY, headers=H, timeout=60)
        waited = time.time() - t0
    finally:
        for s in slow:
            if s is not None:
                s.close()
    assert r.status_code == 200, r.text[:300]
    assert waited < 10, f"a normal request waited {waited:.1f} s behind slow clients"
    print(f"slow clients: normal request answered in {waited:.2f} s")
    ran = _haproxy_config(lean.proc.pid)  # the ingress runs with our read timeout and limit
    assert "timeout http-request 3s" in ran and "option http-buffer-request" in ran
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


def test_status_without_an_address_finds_the_server_this_machine_runs(lean):
    t0 = time.time()
    st = cli("--status", "--port", str(lean.port))
    assert st.returncode == 0, st.stderr[-1000:]
    out = json.loads(st.stdout)
    assert out["serving"]["model"] == "cai-tiny-sft", out
    assert out["serving"]["ray_address"] == lean.info["ray_address"]
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


def test_sigterm_to_the_process_group_leaves_no_process_and_no_listening_port(lean):
    tree = _tree(lean.proc.pid)
    names = set(tree.values())
    assert any(n.startswith("ray::ServeRepli") for n in names), names
    assert "haproxy" in names and "raylet" in names, names
    assert any("EngineCore" in n or "VLLM" in n.upper() for n in names) or len(tree) > 8, names
    ports = [port for _, port in _listening(set(tree))]
    assert lean.port in ports
    os.killpg(lean.proc.pid, signal.SIGTERM)  # as a supervisor stops a service
    assert lean.proc.wait(120) == 0
    deadline = time.time() + 30
    while time.time() < deadline and any(_running(p) for p in tree):
        time.sleep(0.5)
    left = {p: tree[p] for p in tree if _running(p)}
    assert not left, f"still running after SIGTERM: {left}"
    still = [p for p in ports if _port_open(p)]
    assert not still, f"ports still listening: {still}"
    st = cli("--status", "--port", str(lean.port), timeout=30)
    assert st.returncode == 1 and "nothing is being served" in st.stderr, st.stderr


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
