"""Cluster addresses that are not a Ray cluster are exit 2 within seconds, before anything starts:
a wrong scheme or port at load time, nothing listening, an HTTP server, a gRPC server that is not
Ray's (what an intercepting proxy looks like), and a listener that never answers. A gRPC server
that answers Ray's GetClusterId (a stand-in for a GCS: the real one is joined by the cluster
tests) passes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from cai_ray.cluster import address_problem, check_answers
from cai_ray.errors import InputError


@pytest.mark.parametrize("address, ok", [
    ("127.0.0.1:6379", True), ("ray://10.0.0.1:10001", True), ("auto", True),
    ("[::1]:6379", True), ("ftp://127.0.0.1:21", False), ("http://127.0.0.1:8265", False),
    ("127.0.0.1", False), ("127.0.0.1:0", False), ("host:99999", False), (":6379", False),
])
def test_address_forms(address, ok):
    assert (address_problem(address) is None) == ok, address_problem(address)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cai_ray.cli", "run", "tiny", "--dry-run",
                           *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CAI_RAY_FORCE_CPU": "1"})


def test_a_wrong_scheme_is_refused_at_load_time(tmp_path):
    r = _cli("--run-dir", str(tmp_path / "run"), "--set", "ray.address=ftp://127.0.0.1:21")
    assert r.returncode == 2
    assert "scheme ftp:// is not a Ray address" in r.stderr.strip().splitlines()[-1]


@pytest.fixture
def http_server():
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_an_http_server_is_not_a_ray_cluster(tmp_path, http_server):
    t0 = time.time()
    r = _cli("--run-dir", str(tmp_path / "run"), "--set", f"ray.address={http_server}")
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert f"Ray address {http_server}: something listens there, but it does not answer as a " \
           f"Ray cluster" in line, line
    assert not (tmp_path / "run").exists()
    print(f"refused in {time.time() - t0:.1f} s")


def _grpc_server(handlers):
    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(2))
    if handlers:
        server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def test_a_grpc_server_that_is_not_ray_is_refused():
    server, address = _grpc_server(None)
    try:
        with pytest.raises(InputError, match="does not answer as a Ray cluster"):
            check_answers(address, timeout_s=3)
    finally:
        server.stop(0)


def test_a_stand_in_that_answers_ray_s_get_cluster_id_passes():
    import grpc

    handler = grpc.method_handlers_generic_handler("ray.rpc.NodeInfoGcsService", {
        "GetClusterId": grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: b"", request_deserializer=lambda b: b,
            response_serializer=lambda b: b)})
    server, address = _grpc_server((handler,))
    try:
        check_answers(address, timeout_s=3)
    finally:
        server.stop(0)


def test_a_listener_that_never_answers_is_refused_at_the_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        t0 = time.time()
        with pytest.raises(InputError, match="does not answer as a Ray cluster"):
            check_answers(f"127.0.0.1:{silent.getsockname()[1]}", timeout_s=1)
        assert time.time() - t0 < 30  # bounded by the timeout, not Ray's minutes
    finally:
        silent.close()


def test_nothing_listening_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InputError, match="no cluster answers there"):
        check_answers(f"127.0.0.1:{port}", timeout_s=1)
