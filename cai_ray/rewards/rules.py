"""Rule-based rewards: cheap, deterministic signals for tests and ablations."""

from __future__ import annotations

from cai_ray.errors import InputError
from cai_ray.rewards.registry import Scored, register_reward


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
        self.check(arg)
        self.word = arg.lower()

    @classmethod
    def check(cls, arg: str, **_) -> None:
        if not arg:
            raise InputError("rl.reward contains:WORD: give the word after the colon")

    def score(self, batch: list[Scored]) -> list[float]:
        return [1.0 if self.word in s.response.lower() else 0.0 for s in batch]


@register_reward("share")
class CharShare:
    def __init__(self, arg: str, **_):
        self.check(arg)
        self.chars = set(arg)

    @classmethod
    def check(cls, arg: str, **_) -> None:
        if not arg:
            raise InputError("rl.reward share:CHARS: give the characters after the colon")

    def score(self, batch: list[Scored]) -> list[float]:
        return [sum(c in self.chars for c in s.response) / max(len(s.response), 1)
                for s in batch]
