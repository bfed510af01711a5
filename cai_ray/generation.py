"""What goes into an engine and what comes out: plain records, shared by the engines
(cai_ray/engines/), the prompt builders (cai_ray/prompts/) and the stages, with no engine behind
them."""

from __future__ import annotations

from dataclasses import dataclass, field

TOO_LONG = "prompt_too_long"


@dataclass
class Request:
    """A prompt as chat messages (rendered with the model's chat template) or as raw text, or as
    token ids (RL rollouts); exactly one of the three."""

    id: str
    messages: list[dict] | None = None
    text: str | None = None
    token_ids: list[int] | None = None
    add_generation_prompt: bool = True
    continue_final: bool = False
    """Render the last (assistant) message open, so generation continues it (judge prefixes)."""


@dataclass
class Sampling:
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False


@dataclass
class Completion:
    request_id: str
    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    logprobs: list[float] | None = None
    """Log-probability of each generated token under the model, (len(token_ids),)."""
    finish_reason: str = "stop"
    index: int = 0  # which of the n samples
