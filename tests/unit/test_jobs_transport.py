"""submit / jobs: the Ray token never goes in clear text to another machine unless --insecure."""

import pytest

from cai_ray.errors import InputError
from cai_ray.jobs_api import check_transport

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
