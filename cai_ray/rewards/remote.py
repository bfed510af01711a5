"""Scorers behind HTTP: a reward model or the judge served by `cai-ray serve --score / --judge`
(or any server speaking those routes)."""

from __future__ import annotations

from cai_ray.errors import InputError
from cai_ray.rewards.registry import REWARDS, Scored, check_scores


class HttpReward:
    """A scorer behind HTTP, served by `cai-ray serve` (or any server speaking the route):

    .../v1/score  the reward model: POST {"pairs": [{prompt, response}]}, read "scores" (batches
                  of at most 64)
    .../v1/judge  the constitutional judge, pairwise: POST {"prompt", "answers": [rollout, the SFT
                  model's answer]} per rollout (a few at a time), read "p_first": P(the rollout is
                  better), over the server's principles and both orders

    A server error or timeout fails the iteration (the stage's retry and resume apply) rather
    than training on made-up rewards."""

    BATCH = 64
    JUDGE_IN_FLIGHT = 8

    def __init__(self, url: str, *, timeout_s: float = 120.0, api_key_env: str = "CAI_RAY_API_KEY",
                 references: dict[str, str] | None = None, **_):
        from cai_ray.engines.http_engine import headers_for

        self.route = http_route(url)
        self.url, self.timeout, self.refs = url, timeout_s, references
        self.headers = headers_for(api_key_env)
        if self.route == "judge" and references is None:
            raise ValueError("rl.reward .../v1/judge: needs the SFT model's answers (pairwise)")

    def _post(self, body: dict) -> dict:
        import httpx

        r = httpx.post(self.url, json=body, headers=self.headers, timeout=self.timeout)
        if r.status_code != 200:
            raise RuntimeError(f"rl.reward {self.url}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def _scores(self, pairs: list[dict]) -> list[float]:
        return check_scores(self.url, self._post({"pairs": pairs}).get("scores"), len(pairs))

    def _judged(self, prompt: str, answer: str, reference: str, item_id: str) -> float:
        out = self._post({"prompt": prompt, "answers": [answer, reference], "id": item_id})
        return check_scores(self.url, [out.get("p_first")], 1)[0]

    def check(self) -> None:
        """Load time: the server answers a probe with a number."""
        import httpx

        try:
            if self.route == "judge":
                self._judged("Hello?", "Hi there.", "Go away.", "probe")
            else:
                self._scores([{"prompt": "Hello?", "response": "Hi there."}])
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            raise InputError(f"rl.reward {self.url}: the server did not answer a probe "
                             f"({str(exc).splitlines()[0][:200]}); is `cai-ray serve "
                             f"--{self.route}` running there?") from None

    def score(self, batch: list[Scored]) -> list[float]:
        if self.route == "judge":
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.JUDGE_IN_FLIGHT) as ex:
                return list(ex.map(lambda s: self._judged(
                    s.prompt, s.response, self.refs.get(s.prompt_id, ""), s.prompt_id), batch))
        pairs = [{"prompt": s.prompt, "response": s.response} for s in batch]
        out: list[float] = []
        for k in range(0, len(pairs), self.BATCH):
            out += self._scores(pairs[k:k + self.BATCH])
        return out


def http_route(url: str) -> str:
    """'score' or 'judge': which served scorer a URL names; InputError for anything else."""
    from urllib.parse import urlparse

    u = urlparse(url)
    route = u.path.rstrip("/").rsplit("/v1/", 1)[-1] if "/v1/" in u.path else ""
    if not u.hostname or route not in ("score", "judge"):
        raise InputError(f"rl.reward {url!r}: give a served scorer's URL, "
                         f"http(s)://HOST:PORT/v1/score (`cai-ray serve RUN --score`) or "
                         f".../v1/judge (`cai-ray serve RUN --judge`)")
    return route


class _Scheme:
    """rl.reward http://... and https://...: the registry's entries for the two schemes."""

    def __init__(self, scheme: str):
        self.scheme = scheme

    def __call__(self, arg: str, **params) -> HttpReward:
        return HttpReward(f"{self.scheme}:{arg}", **params)

    def check(self, arg: str, **_) -> None:
        HttpReward(f"{self.scheme}:{arg}", references={}).check()


REWARDS["http"], REWARDS["https"] = _Scheme("http"), _Scheme("https")
