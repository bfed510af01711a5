"""The `judge:` section of the job file: the constitutional judge (cai_ray/judges builds it), and
the check it passes before it labels anything (`judge.gate`, `judge.check`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cai_ray.config.sections import OPERATIONAL, _Section


class JudgeCheckCfg(_Section):
    """The labelled pairs the judge is scored on before it labels anything (cai_ray/judges/gate)."""

    data: str = "builtin"
    """builtin: the pairs shipped with cai-ray (harmful against harmless answers, helpful against
    unhelpful ones, in our own words); hh-rlhf: HH-RLHF harmless-base from the shared data; or a
    file in a format `cai-ray eval judge --data` reads (HH-RLHF, or a pairs JSONL)."""
    pairs: int = Field(48, ge=4)
    """At most this many pairs (fewer when the file holds fewer)."""
    min_accuracy: float = Field(0.5, ge=0.0, lt=1.0)
    """The gate passes when the 95% Wilson interval's lower bound of the judge's accuracy (a tie
    counts as a wrong answer) is above this: 0.5 is chance on pairs shown in both orders."""
    max_position_bias: float = Field(0.5, ge=0.0, le=1.0)
    """... and at most this share of its verdicts flip with the order of the answers: a judge
    whose two orders disagree on most pairs decides by position, and what is left after averaging
    the orders is a margin of hundredths, whatever its accuracy on a few pairs."""


class JudgeCfg(_Section):
    """The constitutional judge (Bai et al. 2022 sec. 4.1): one component, built by cai_ray/judges
    for every caller (preferences, the rl stage's judge reward, eval, `cai-ray eval judge`,
    `cai-ray bench judge`, `cai-ray serve --judge`). Its method and backend are names in
    cai_ray/judges' registries, checked there at load time."""

    method: str = "logprob"
    """How it decides: logprob, the probabilities of the option tokens (A)/(B) after the judge
    prompt; generative, it writes its verdict, which is parsed (unparseable verdicts count as a tie
    and are reported)."""
    backend: str = "engines"
    """Where it runs: engines, engine actors of ours (judge.model on its own actors, else the
    policy's); http, any OpenAI-compatible server at `url` (logprob needs log-probabilities)."""
    model: str | None = None
    """A model name or folder (http: the served model's, whose tokenizer builds the prompts).
    None: the policy judges itself in preferences and rl, the base model judges in eval."""
    url: str | None = None
    """http: the server's base URL (http://127.0.0.1:8000/v1); its key from api_key_env."""
    api_key_env: str = "CAI_RAY_API_KEY"
    engine: dict[str, Any] = Field(default_factory=dict)
    """The separate judge's own resources: `engine` fields that differ for its actors (e.g.
    num_actors, num_gpus_per_actor, tensor_parallel_size, kv_cache_gib). Needs model."""
    principles_per_pair: int = Field(2, ge=1)
    num_fewshot: int = Field(1, ge=0)
    both_orders: bool = True
    chain_of_thought: bool = False
    cot_max_new_tokens: int = Field(96, ge=1)
    verdict_max_new_tokens: int = Field(24, ge=1)
    """generative: tokens the judge may write before its verdict is read."""
    ranking: Literal["pairwise", "groupwise"] = "pairwise"
    """How the judge scores k answers to one prompt (online DPO; the rl stage's judge reward):
    pairwise, each against one other answer (rl: the SFT model's, see rl.judge_mode); groupwise,
    every pair of the k in both orders and a Bradley-Terry fit per prompt (judges/ranking.py)."""
    gate: Literal["fail", "warn", "off"] = Field("fail", json_schema_extra=OPERATIONAL)
    """Before the preferences stage, an rl stage rewarded by the judge, or online DPO uses the
    judge, it is scored on judge.check's labelled pairs. fail: a judge at chance stops the run
    (exit 2) before anything is labelled; warn: the run goes on and says so; off: no check."""
    check: JudgeCheckCfg = Field(default_factory=JudgeCheckCfg, json_schema_extra=OPERATIONAL)

    @field_validator("gate", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    @model_validator(mode="after")
    def _needs(self) -> "JudgeCfg":
        if self.engine and not self.model:
            raise ValueError("engine sets the resources of a separate judge; set judge.model too "
                             "(without it the policy judges itself on its own engine actors)")
        return self
