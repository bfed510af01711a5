"""A user's reward function: rl.reward `module:function`, a callable
func(prompts, completions, **kw) -> list[float] (the TRL reward-function convention); kw:
completion_lengths, prompt_ids, max_tokens."""

from __future__ import annotations

import importlib
from typing import Callable

from cai_ray.errors import InputError
from cai_ray.rewards.registry import Scored, check_scores, register_reward


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


@register_reward("callable")
class CallableReward:
    def __init__(self, spec: str, *, max_tokens: int = 64, **_):
        self.spec, self.fn, self.max_tokens = spec, load_callable(spec), max_tokens

    def score(self, batch: list[Scored]) -> list[float]:
        out = self.fn([s.prompt for s in batch], [s.response for s in batch],
                      completion_lengths=[s.n_tokens for s in batch],
                      prompt_ids=[s.prompt_id for s in batch], max_tokens=self.max_tokens)
        return check_scores(self.spec, out, len(batch))

    @classmethod
    def check(cls, spec: str, *, max_tokens: int = 64, **_) -> None:
        """It imports and, on two probe completions, returns two numbers."""
        probe = [Scored("probe-0", "Hello?", "Hi there.", 3),
                 Scored("probe-1", "How are you?", "Fine, thanks.", 4)]
        cls(spec, max_tokens=max_tokens).score(probe)
