"""The one place where old job-file keys take their current names, so job files, `--set` flags
and manifests written by earlier versions keep their meaning:

    ppo: {...}                         -> rl: {algorithm: ppo, ...}   (reward_fn -> reward,
                                          micro_batch_size also sets mini_batch_size)
    preferences.judge_model, ...       -> judge.model, ...            (JUDGE_FIELDS)
    judge.kind: logprob | generative   -> judge.method
    judge.kind: http                   -> judge.method: logprob, judge.backend: http
    --stages ppo                       -> rl                          (STAGE_ALIASES)
"""

from __future__ import annotations

from typing import Any

JUDGE_FIELDS = {"judge_model": "model", "judge_engine": "engine",
                "principles_per_pair": "principles_per_pair", "num_fewshot": "num_fewshot",
                "both_orders": "both_orders", "chain_of_thought": "chain_of_thought",
                "cot_max_new_tokens": "cot_max_new_tokens"}
"""Old `preferences.` fields that are now the `judge:` section's."""
RL_FIELDS = {"reward_fn": "reward"}
"""Old `ppo.` field names that differ under `rl:` (ppo_epochs is an alias of update_epochs)."""
STAGE_ALIASES = {"ppo": "rl"}
JUDGE_KINDS = {"logprob": {"method": "logprob"}, "generative": {"method": "generative"},
               "http": {"method": "logprob", "backend": "http"}}


def migrate(data: Any) -> Any:
    """A raw job mapping with every old key under its current name (a no-op for new ones)."""
    if not isinstance(data, dict):
        return data
    data = _rl_section(dict(data))
    data = _judge_fields(data)
    data = _judge_kind(data)
    if isinstance(data.get("stages"), list):
        data["stages"] = [STAGE_ALIASES.get(s, s) if isinstance(s, str) else s
                          for s in data["stages"]]
    return data


def _rl_section(data: dict) -> dict:
    if "ppo" not in data:
        return data
    if "rl" in data:
        raise ValueError("both `ppo:` and `rl:` sections; `ppo:` is the old name of `rl:`, "
                         "keep one")
    sec = data.pop("ppo") or {}
    if not isinstance(sec, dict):
        raise ValueError("ppo: must be a mapping of fields")
    sec = {RL_FIELDS.get(k, k): v for k, v in sec.items()}
    sec.setdefault("algorithm", "ppo")
    if "micro_batch_size" in sec:  # it was the rollouts per optimizer step
        sec.setdefault("mini_batch_size", sec["micro_batch_size"])
    data["rl"] = sec
    return data


def _judge_fields(data: dict) -> dict:
    if not isinstance(data.get("preferences"), dict):
        return data
    pref = dict(data["preferences"])
    moved = {JUDGE_FIELDS[k]: pref.pop(k) for k in list(pref) if k in JUDGE_FIELDS}
    if not moved:
        return data
    judge = dict(data.get("judge") or {})
    both = sorted(k for k in moved if k in judge and judge[k] != moved[k])
    if both:
        raise ValueError(f"judge.{both[0]} and its old name under preferences: are both set; "
                         f"keep judge.{both[0]}")
    moved = {k: v for k, v in moved.items() if v is not None or k in judge}
    return {**data, "preferences": pref, "judge": {**moved, **judge}}


def _judge_kind(data: dict) -> dict:
    judge = data.get("judge")
    if not isinstance(judge, dict) or "kind" not in judge:
        return data
    judge = dict(judge)
    kind = judge.pop("kind")
    if kind not in JUDGE_KINDS:
        raise ValueError(f"judge.kind: {kind!r} is not one of {sorted(JUDGE_KINDS)} (kind is the "
                         f"old name of judge.method and judge.backend)")
    for key, value in JUDGE_KINDS[kind].items():
        if judge.get(key, value) != value:
            raise ValueError(f"judge.kind: {kind} and judge.{key}: {judge[key]} disagree; "
                             f"kind is the old name of judge.method and judge.backend, keep those")
        judge[key] = value
    return {**data, "judge": judge}


def override_path(path: list[str]) -> list[str]:
    """--set ppo.reward_fn=short -> rl.reward; --set preferences.judge_model=M -> judge.model."""
    if len(path) > 1 and path[0] == "preferences" and path[1] in JUDGE_FIELDS:
        return ["judge", JUDGE_FIELDS[path[1]]] + path[2:]
    if path and path[0] == "ppo":
        return ["rl"] + ([RL_FIELDS.get(path[1], path[1])] + path[2:] if len(path) > 1 else [])
    return path
