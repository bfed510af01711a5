"""The registry of reward sources: a name (the part of rl.reward before the colon) -> a class
that scores (prompt, answer) rows. The built-in sources are the modules beside this one.

    @register_reward("mine")
    class Mine:
        def __init__(self, arg: str, **params): ...
        def score(self, batch: list[Scored]) -> list[float]: ...
        @classmethod
        def check(cls, arg: str, **params) -> None: ...   # optional: load-time check
"""

from __future__ import annotations

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
    if head in REWARDS and head != "callable":
        return head, arg
    if sep and head and arg:
        return "callable", spec
    named = sorted(k for k in REWARDS if k not in ("callable", "http", "https"))
    raise InputError(f"rl.reward {spec!r}: not a reward source; use {', '.join(named)} (WORD or "
                     f"CHARS after a colon where it takes one), http://HOST:PORT/v1/score (or "
                     f"/v1/judge) or module:function")


def build_reward(spec: str, **params) -> RewardSource:
    kind, arg = reward_kind(spec)
    return REWARDS[kind](arg if kind != "callable" else spec, **params)


def check_reward(spec: str, max_tokens: int) -> None:
    """Load-time check of rl.reward: the source exists, and its own check passes (a callable
    imports and answers a probe, a server answers). InputError naming rl.reward otherwise."""
    kind, arg = reward_kind(spec)
    check = getattr(REWARDS[kind], "check", None)
    if check is not None:
        check(arg if kind != "callable" else spec, max_tokens=max_tokens)


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
