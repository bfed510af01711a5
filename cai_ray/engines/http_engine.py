"""An engine behind an OpenAI-compatible HTTP server (`vllm serve`, `cai-ray serve`, any server
with /v1/completions and log-probabilities): the judge of kind `http`.

Prompts are tokenized here with the served model's tokenizer (the same chat template and option
tokens as the in-process judge) and sent as token ids to /v1/completions. The judge's option
tokens are scored exactly: each is appended to the prompt and echoed back with its
log-probability (`echo` + `logprobs`, keyed by token id with vLLM's `return_tokens_as_token_ids`).
A server that cannot echo gets the top-`TOP_LOGPROBS` fallback, where an option outside the list
takes the smallest listed log-probability (an upper bound on its own).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from cai_ray.engines.base import Engine
from cai_ray.errors import InputError
from cai_ray.generation import Completion, Sampling

TOP_LOGPROBS = 20
"""vLLM's default max_logprobs."""


def headers_for(api_key_env: str) -> dict:
    key = os.environ.get(api_key_env)
    return {"Authorization": f"Bearer {key}"} if key else {}


def served_model(base: str, headers: dict) -> str:
    """The first model the server lists at /models; one clear InputError if it cannot say."""
    import httpx

    base = base.rstrip("/")
    try:
        r = httpx.get(f"{base}/models", headers=headers, timeout=30)
    except httpx.HTTPError as err:
        raise InputError(f"judge.url {base}: no answer from the server ({err}); start it or fix "
                         f"the url") from None
    if r.status_code == 401:
        raise InputError(f"judge.url {base}: 401 unauthorized; put the server's key in the "
                         f"judge's api_key_env variable")
    try:
        data = r.json().get("data") if r.status_code == 200 else None
    except ValueError:
        data = None
    if not data:
        raise InputError(f"judge.url {base}/models: HTTP {r.status_code}, no model listed; give "
                         f"the server's OpenAI base URL (ending in /v1)")
    return data[0]["id"]


class HttpEngine(Engine):
    backend = "http"

    def __init__(self, url: str, model_path: str, *, api_key_env: str = "CAI_RAY_API_KEY",
                 timeout_s: float = 300.0, concurrency: int = 8, max_model_len: int = 2048):
        super().__init__(model_path, max_model_len=max_model_len)
        self.base, self.timeout = url.rstrip("/"), timeout_s
        self.headers = headers_for(api_key_env)
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="http-engine")
        self.served = self._model_id()
        self.echo = True

    def _model_id(self) -> str:
        return served_model(self.base, self.headers)

    def _complete(self, body: dict, refusable: bool = False) -> dict | None:
        """POST /completions; with refusable, None when the server refuses the request (400,
        422: a server that cannot echo prompt log-probabilities)."""
        import httpx

        r = httpx.post(f"{self.base}/completions", headers=self.headers, timeout=self.timeout,
                       json={"model": self.served, "return_tokens_as_token_ids": True, **body})
        if refusable and r.status_code in (400, 422):
            return None
        if r.status_code != 200:
            raise RuntimeError(f"{self.base}/completions: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def _generate_ids(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        body = {"max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "n": sampling.n, "logprobs": 1,
                **({"seed": sampling.seed} if sampling.seed is not None else {}),
                **({"stop": sampling.stop} if sampling.stop else {})}

        def one(ids: list[int]) -> list[Completion]:
            out = self._complete({**body, "prompt": ids})
            comps = []
            for ch in sorted(out["choices"], key=lambda c: c["index"]):
                lp = ch.get("logprobs") or {}
                toks = [int(t.split(":", 1)[1]) for t in lp.get("tokens") or []]
                comps.append(Completion("", ch["text"], toks, ids,
                                        lp.get("token_logprobs") if sampling.logprobs else None,
                                        ch.get("finish_reason") or "stop", ch["index"]))
            return comps

        return list(self.pool.map(one, prompts))

    def next_token_logprobs(self, requests, token_ids: list[int]) -> list[list[float]]:
        """Each candidate token appended to the prompt and echoed back with its log-probability
        (exact, as the in-process engines score it); servers that cannot echo prompt
        log-probabilities get the top-TOP_LOGPROBS fallback."""
        def one(req) -> list[float]:
            ids = self.encode(req)
            if self.echo:
                out = self._complete({"prompt": [ids + [t] for t in token_ids], "max_tokens": 1,
                                      "temperature": 0.0, "echo": True, "logprobs": 0},
                                     refusable=True)
                if out is not None:
                    chs = sorted(out["choices"], key=lambda c: c["index"])
                    return [ch["logprobs"]["token_logprobs"][len(ids)] for ch in chs]
                self.echo = False
            out = self._complete({"prompt": ids, "max_tokens": 1, "temperature": 0.0,
                                  "logprobs": TOP_LOGPROBS})
            top = out["choices"][0]["logprobs"]["top_logprobs"][0]
            by_id = {int(k.split(":", 1)[1]): v for k, v in top.items()}
            floor = min(by_id.values())
            return [by_id.get(t, floor) for t in token_ids]

        return list(self.pool.map(one, requests))

    def _score_ids(self, pairs):
        raise NotImplementedError("http engine: scores the next token only (the judge); "
                                  "teacher-forced scoring needs an in-process engine")

    def _load_folder(self, folder: str) -> None:
        raise NotImplementedError("http engine: the server owns its weights")
