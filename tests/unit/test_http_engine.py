"""The engine behind an OpenAI-compatible server (cai_ray/engines/http_engine.py), against a small
server on 127.0.0.1 that answers as vLLM's /v1 does (token ids as "token_id:N", echoed prompt
log-probabilities, top log-probabilities): what the client sends and how it reads the answers.
The real path, through `cai-ray serve`, is tests/integration/test_serve.py's http judge."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cai_ray.errors import InputError
from cai_ray.generation import Request, Sampling


class Fake:
    """What the server does; each test sets it."""

    key, echo, bodies = "k", True, []


def lp(token_id: int) -> float:  # a deterministic log-probability per token id
    return -0.01 * (token_id % 97) - 0.1


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.headers.get("Authorization") != f"Bearer {Fake.key}":
            return self._send(401, {"error": "unauthorized"})
        self._send(200, {"data": [{"id": "served-model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Fake.bodies.append(body)
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        if body.get("echo"):
            if not Fake.echo:
                return self._send(400, {"error": "echo is not supported"})
            return self._send(200, {"choices": [
                {"index": i, "text": "",
                 "logprobs": {"token_logprobs": [None] + [lp(t) for t in p[1:]]}}
                for i, p in enumerate(prompts)]})
        if body.get("logprobs", 0) > 1:  # the top-logprobs fallback: ids 7 and 8 listed only
            return self._send(200, {"choices": [{"index": 0, "text": "x", "logprobs": {
                "top_logprobs": [{"token_id:7": -0.5, "token_id:8": -1.5}]}}]})
        n = body.get("n", 1)
        return self._send(200, {"choices": [
            {"index": i, "text": f"answer {i}", "finish_reason": "length",
             "logprobs": {"tokens": ["token_id:11", "token_id:12"], "token_logprobs": [-1.0, -2.0]}}
            for i in reversed(range(n))]})


@pytest.fixture
def server(monkeypatch):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Fake.key, Fake.echo, Fake.bodies = "k", True, []
    monkeypatch.setenv("TEST_HTTP_KEY", "k")
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


@pytest.fixture
def engine(server, tiny_model):
    from cai_ray.engines.http_engine import HttpEngine

    return HttpEngine(server, tiny_model, api_key_env="TEST_HTTP_KEY")


def test_generation_sends_token_ids_and_reads_every_sample(engine):
    req = Request("r1", messages=[{"role": "user", "content": "Hi?"}])
    (comps,) = engine.generate([req], Sampling(max_tokens=5, n=2, seed=3, logprobs=True))
    body = Fake.bodies[-1]
    assert body["model"] == "served-model" and body["prompt"] == engine.encode(req)
    assert (body["n"], body["max_tokens"], body["seed"]) == (2, 5, 3)
    assert [c.index for c in comps] == [0, 1] and comps[0].text == "answer 0"
    assert comps[1].token_ids == [11, 12] and comps[1].logprobs == [-1.0, -2.0]
    assert all(c.request_id == "r1" and c.finish_reason == "length" for c in comps)


def test_option_tokens_are_scored_exactly_by_echo(engine):
    req = Request("j", text="Which is better? The answer is: (")
    ids = engine.encode(req)
    (got,) = engine.next_token_logprobs([req], [7, 8])
    assert got == pytest.approx([lp(7), lp(8)])
    assert Fake.bodies[-1]["prompt"] == [ids + [7], ids + [8]] and Fake.bodies[-1]["echo"]


def test_a_server_that_cannot_echo_gets_the_top_logprobs_fallback(engine):
    Fake.echo = False
    req = Request("j", text="The answer is: (")
    assert engine.next_token_logprobs([req], [7, 8, 9])[0] == [-0.5, -1.5, -1.5]  # 9: the floor
    assert not engine.echo  # not asked again


def test_a_wrong_key_is_one_clear_error(server, tiny_model, monkeypatch):
    from cai_ray.engines.http_engine import HttpEngine

    monkeypatch.setenv("TEST_HTTP_KEY", "wrong")
    with pytest.raises(InputError, match="401 unauthorized"):
        HttpEngine(server, tiny_model, api_key_env="TEST_HTTP_KEY")
    with pytest.raises(InputError, match="no answer from the server"):
        HttpEngine("http://127.0.0.1:9/v1", tiny_model, api_key_env="TEST_HTTP_KEY")
