"""submit / jobs: the Ray token never goes in clear text to another machine unless --insecure."""

import pytest

from cai_ray.cli.jobs import check_transport
from cai_ray.errors import InputError

BEARER = {"Authorization": "Bearer t"}


@pytest.mark.parametrize("address", ["http://10.0.0.5:8265", "http://head.example:8265",
                                     "10.0.0.5:8265"])
def test_token_over_plain_http_to_another_machine_is_refused(address):
    with pytest.raises(InputError, match="clear text.*--insecure"):
        check_transport(address, BEARER)
    check_transport(address, BEARER, insecure=True)  # asked for


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "http://localhost:8265",
                                     "https://head.example:8265"])
def test_loopback_or_tls_may_carry_the_token(address):
    check_transport(address, BEARER)


def test_ray_token_settings_count_as_sending_a_token(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    check_transport("http://10.0.0.5:8265", {})  # no token anywhere: nothing to protect
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "t")
    with pytest.raises(InputError):
        check_transport("http://10.0.0.5:8265", {})


def _server(status: int):
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"Unauthorized: missing or invalid token")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_a_refused_token_is_not_reported_as_unreachable(tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 that answers 401, as a Ray dashboard with token
    authentication does to a wrong token."""
    from cai_ray.cli.jobs import client

    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    tok = tmp_path / "tok"
    tok.write_text("wrong\n")
    srv = _server(401)
    try:
        with pytest.raises(InputError) as err:
            client(f"http://127.0.0.1:{srv.server_address[1]}", token_file=str(tok))
    finally:
        srv.shutdown()
    assert "refused our credentials" in str(err.value) and "--token-file" in str(err.value)
    assert "cannot reach" not in str(err.value)


def test_nothing_listening_is_reported_as_unreachable():
    from cai_ray.cli.jobs import client
    from cai_ray.cluster import free_port

    port = free_port()  # closed again: nothing listens there
    with pytest.raises(InputError, match="cannot reach the Ray Jobs API"):
        client(f"http://127.0.0.1:{port}")
