"""Typed rows of the data files a run reads: every row of a user's file (and of a stage's output
read back) is checked against these before anything starts (rundir/readers.py validate).

    SftRow         messages: [{role, content}, ...] with an assistant turn to train on
    PreferenceRow  prompt or conversation; chosen, rejected; p_chosen in [0, 1] and source
                   (ai | human), both optional
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import field_validator, model_validator

from cai_ray.rundir.readers import Message, Row


def _messages(v: Any) -> Any:
    """A datasets folder may hold messages as JSON text: parsed before they are typed."""
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            raise ValueError("expected a list of {role, content} messages (or their JSON), "
                             "got text that is not JSON") from None
    return v


class SftRow(Row):
    expected = "an object with messages"
    messages: list[Message]

    _parse = field_validator("messages", mode="before")(lambda cls, v: _messages(v))

    @model_validator(mode="after")
    def _trains_something(self) -> "SftRow":
        if not any(m.role == "assistant" for m in self.messages):
            raise ValueError("messages: no assistant message to train on")
        return self


class PreferenceRow(Row):
    expected = "an object with prompt (or conversation), chosen and rejected"
    prompt: str | None = None
    conversation: list[Message] | None = None
    chosen: str
    rejected: str
    p_chosen: float | None = None
    source: Literal["ai", "human"] | None = None
    """Who labelled the pair (the reward stage's mixed data); None: the AI judge."""

    _parse = field_validator("conversation", mode="before")(lambda cls, v: _messages(v))

    @field_validator("p_chosen")
    @classmethod
    def _probability(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ValueError(f"{v!r} is not a probability in [0, 1]")
        return v

    @model_validator(mode="after")
    def _has_context(self) -> "PreferenceRow":
        if self.prompt is None and self.conversation is None:
            raise ValueError("needs a prompt (text) or a conversation (messages)")
        return self
