"""Where the RL stage's reward comes from: one small class per source, behind one interface.

    source = build_reward("contains:sorry", max_tokens=64)
    source.score([Scored("p1", "How do I ...?", "I can't help with that.", 9)])   # -> [1.0]

rl.reward picks one:
    model          the reward stage's preference model (Bai et al. 2022 sec. 4.1)
    judge          the constitutional judge scores each rollout directly, on its own engine actors
                   (direct RLAIF): pairwise, P(the rollout beats the SFT model's answer to the same
                   prompt); or pointwise, P("yes") to "does this answer follow the principle?"
    short          1 - answer tokens / max tokens (tests, ablations)
    contains:WORD  1 if the answer contains WORD, else 0 (tests)
    share:CHARS    the share of the answer's characters that are among CHARS (tests: a dense
                   signal that a random tiny model can learn whatever the machine's numerics)
    http(s)://HOST:PORT/v1/score   a reward model served by `cai-ray serve --score` (or any
                   server speaking that route); the key from $CAI_RAY_API_KEY
    http(s)://HOST:PORT/v1/judge   the judge served by `cai-ray serve --judge`, pairwise against
                   the SFT model's answers, like `judge`
    module:func    a Python callable func(prompts, completions, **kw) -> list[float] (the TRL
                   reward-function convention); kw: completion_lengths, prompt_ids, max_tokens
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable, Protocol

from cai_ray.errors import InputError


@dataclass
class Scored:
    prompt_id: str
    prompt: str
    response: str
    n_tokens: int


class RewardSource(Protocol):
    def score(self, batch: list[Scored]) -> list[float]: ...


REWARDS: dict[str, Callable[..., RewardSource]] = {}


def register_reward(kind: str):
    def deco(cls):
        REWARDS[kind] = cls
        return cls
    return deco


def reward_kind(spec: str) -> tuple[str, str]:
    """'contains:sorry' -> ('contains', 'sorry'); 'pkg.mod:fn' -> ('callable', 'pkg.mod:fn')."""
    head, sep, arg = spec.partition(":")
    if head in REWARDS:
        return head, arg
    if sep and head and arg:
        return "callable", spec
    raise InputError(f"rl.reward {spec!r}: not a reward source; use model, judge, short, "
                     f"contains:WORD, share:CHARS, http://HOST:PORT/v1/score (or /v1/judge) or "
                     f"module:function")


def build_reward(spec: str, **params) -> RewardSource:
    kind, arg = reward_kind(spec)
    return REWARDS[kind](arg, **params)


@register_reward("short")
class ShortAnswer:
    """1 for an answer that ends at once, 0 for one that runs to the length limit."""

    def __init__(self, arg: str = "", *, max_tokens: int = 64, **_):
        self.max_tokens = max_tokens

    def score(self, batch: list[Scored]) -> list[float]:
        return [1.0 - min(1.0, s.n_tokens / self.max_tokens) for s in batch]


@register_reward("contains")
class ContainsWord:
    def __init__(self, arg: str, **_):
        if not arg:
            raise InputError("rl.reward contains:WORD: give the word after the colon")
        self.word = arg.lower()

    def score(self, batch: list[Scored]) -> list[float]:
        return [1.0 if self.word in s.response.lower() else 0.0 for s in batch]


@register_reward("share")
class CharShare:
    def __init__(self, arg: str, **_):
        if not arg:
            raise InputError("rl.reward share:CHARS: give the characters after the colon")
        self.chars = set(arg)

    def score(self, batch: list[Scored]) -> list[float]:
        return [sum(c in self.chars for c in s.response) / max(len(s.response), 1)
                for s in batch]


@register_reward("model")
class RewardModel:
    """The trained preference model's scalar on (prompt, answer)."""

    def __init__(self, arg: str = "", *, reward_model: str | None = None, **_):
        from cai_ray.train.reward import RewardScorer

        if not reward_model:
            raise InputError("rl.reward model: no reward model; run the reward stage first or "
                             "set rl.reward_model")
        self.scorer = RewardScorer(reward_model)

    def score(self, batch: list[Scored]) -> list[float]:
        return self.scorer.score([[{"role": "user", "content": s.prompt},
                                   {"role": "assistant", "content": s.response}] for s in batch])


def load_callable(spec: str) -> Callable:
    """Import 'module:function' (the working directory included, as `python -m` would); InputError
    naming rl.reward when it does not import."""
    import os
    import sys

    mod_name, _, fn_name = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"rl.reward {spec!r}: cannot import it ({type(exc).__name__}: {exc}); "
                         f"give module:function importable on every node") from None
    if not callable(fn):
        raise InputError(f"rl.reward {spec!r}: {fn_name} is not callable")
    return fn


def check_scores(spec: str, out, n: int) -> list[float]:
    if not isinstance(out, (list, tuple)) or len(out) != n:
        got = f"{type(out).__name__} of length {len(out)}" if hasattr(out, "__len__") \
            else type(out).__name__
        raise InputError(f"rl.reward {spec!r}: returned {got} for {n} completions; it must "
                         f"return a list of {n} numbers")
    try:
        vals = [float(x) for x in out]
    except (TypeError, ValueError):
        raise InputError(f"rl.reward {spec!r}: returned a value that is not a number") from None
    if not all(math.isfinite(v) for v in vals):
        raise InputError(f"rl.reward {spec!r}: returned NaN or infinity")
    return vals


@register_reward("callable")
class CallableReward:
    def __init__(self, spec: str, *, max_tokens: int = 64, **_):
        self.spec, self.fn, self.max_tokens = spec, load_callable(spec), max_tokens

    def score(self, batch: list[Scored]) -> list[float]:
        out = self.fn([s.prompt for s in batch], [s.response for s in batch],
                      completion_lengths=[s.n_tokens for s in batch],
                      prompt_ids=[s.prompt_id for s in batch], max_tokens=self.max_tokens)
        return check_scores(self.spec, out, len(batch))


def check_reward(spec: str, max_tokens: int) -> None:
    """Load-time check of rl.reward: the kind exists; a callable imports and, on two probe
    completions, returns two numbers. InputError naming rl.reward otherwise."""
    kind, arg = reward_kind(spec)
    if kind == "callable":
        probe = [Scored("probe-0", "Hello?", "Hi there.", 3),
                 Scored("probe-1", "How are you?", "Fine, thanks.", 4)]
        CallableReward(spec, max_tokens=max_tokens).score(probe)
    elif kind == "contains":
        ContainsWord(arg)
    elif kind in ("http", "https"):
        HttpReward(f"{kind}:{arg}", references={}).check()


@register_reward("judge")
class JudgeReward:
    """The constitutional judge on each rollout (direct RLAIF), on its own engine pool.

    pairwise: the rollout is option one, the SFT model's answer to the same prompt option two;
    the reward is P(the rollout is better), over principles and both orders. pointwise: the judge
    is asked whether the answer follows each principle; the reward is P(yes)."""

    POINTWISE = ("Look at the assistant's last answer in the conversation above, judged by this "
                 "principle: \"{text}\" Which is true of it?")
    YES, NO = "It follows the principle.", "It does not follow the principle."

    def __init__(self, arg: str = "", *, pool=None, tokenizer_path: str = "", constitution=None,
                 mode: str = "pairwise", references: dict[str, str] | None = None,
                 judge_cfg=None, seed: int = 0, batch_size: int = 16, max_in_flight: int = 2,
                 **_):
        from transformers import AutoTokenizer

        from cai_ray import judges
        from cai_ray.constitution import JudgePrinciple
        from cai_ray.sections import JudgeCfg

        cfg = judge_cfg or JudgeCfg()
        if mode == "pointwise":
            constitution = constitution.model_copy(update={"judge": [
                JudgePrinciple(id=p.id, text=self.POINTWISE.format(text=p.text))
                for p in constitution.judge], "judge_fewshot": []})
            cfg = cfg.model_copy(update={"num_fewshot": 0})
        elif references is None:
            raise ValueError("judge reward, pairwise: needs the SFT model's answers")
        if pool is None and cfg.kind == "http":
            pool = judges.http_pool(cfg, tokenizer_path)
        self.mode, self.refs, self.n = mode, references or {}, 0
        self.judge = judges.build(cfg, constitution, pool=pool,
                                  tokenizer=AutoTokenizer.from_pretrained(tokenizer_path),
                                  seed=seed, batch_size=batch_size, max_in_flight=max_in_flight)

    def score(self, batch: list[Scored]) -> list[float]:
        from cai_ray.feedback import JudgeItem

        items = []
        for s in batch:
            self.n += 1
            key = f"{s.prompt_id}#r{self.n}"
            if self.mode == "pointwise":
                convo = [{"role": "user", "content": s.prompt},
                         {"role": "assistant", "content": s.response}]
                items.append(JudgeItem(key, convo, self.YES, self.NO))
            else:
                items.append(JudgeItem(key, [{"role": "user", "content": s.prompt}], s.response,
                                       self.refs.get(s.prompt_id, "")))
        return [j.p_first for j in self.judge.label(items)]


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


REWARDS["http"] = lambda arg, **kw: HttpReward(f"http:{arg}", **kw)
REWARDS["https"] = lambda arg, **kw: HttpReward(f"https:{arg}", **kw)
