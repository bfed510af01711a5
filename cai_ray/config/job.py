"""The job file: one typed, validated YAML document with command-line overrides. Its sections are
in cai_ray/sections.py; this module assembles them and loads, overrides and checks the file.

A bad value fails here, at load time, with the dotted path of the field and the reason, before any
actor starts. Everything else receives plain values taken from these objects.

    job = load_job("jobs/tiny.yaml", overrides=["sl_cai.num_rounds=2"])
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from cai_ray.errors import ConfigError
from cai_ray.stages.registry import ALIASES as STAGE_ALIASES, DEFAULT_STAGES, STAGES  # noqa: F401
from cai_ray.rl.section import CRITIC_FIELDS, RlCfg  # noqa: F401
from cai_ray.sections import (DPO_DATA, JUDGE_LEGACY,  # noqa: F401
                              ConstitutionCfg, DpoCfg, EngineCfg, EvalCfg, JudgeCfg, LoraCfg,
                              ModelCfg, PreferencesCfg, PromptsCfg,
                              RayCfg, RewardCfg, ServeCfg, SftCfg, SlCaiCfg, TrainCfg,
                              _Section)

PACKAGED_JOBS = Path(__file__).parent / "jobs"


class JobConfig(_Section):
    name: str = "cai"
    run_dir: str = "runs/default"
    seed: int = 0
    keep_previous: int = Field(1, ge=0)
    """A stage whose config changed moves its old output to RUN_DIR/.previous/<stage>-<time>; the
    newest this many per stage are kept there, older ones deleted (0: none kept)."""
    stages: list[str] = list(DEFAULT_STAGES)
    start_policy: str | None = None
    """The policy for stages that read one (preferences, dpo, rl, eval) when no stage of the run
    has made one: `base` (model.name) or a model. Unset: such a stage needs sft, dpo or rl in the
    run or complete in the run directory."""
    model: ModelCfg = ModelCfg()
    constitution: ConstitutionCfg = ConstitutionCfg()
    prompts: PromptsCfg = PromptsCfg()
    engine: EngineCfg = EngineCfg()
    ray: RayCfg = RayCfg()
    sl_cai: SlCaiCfg = SlCaiCfg()
    sft: SftCfg = SftCfg()
    preferences: PreferencesCfg = PreferencesCfg()
    judge: JudgeCfg = JudgeCfg()
    reward: RewardCfg = RewardCfg()
    dpo: DpoCfg = DpoCfg()
    rl: RlCfg = RlCfg()
    eval: EvalCfg = EvalCfg()
    serve: ServeCfg = ServeCfg()

    @model_validator(mode="before")
    @classmethod
    def _legacy_judge_fields(cls, data: Any) -> Any:
        """Old job files and manifests: preferences.judge_model, judge_engine, principles_per_pair,
        num_fewshot, both_orders, chain_of_thought and cot_max_new_tokens are the judge's."""
        if not isinstance(data, dict) or not isinstance(data.get("preferences"), dict):
            return data
        pref = dict(data["preferences"])
        moved = {JUDGE_LEGACY[k]: pref.pop(k) for k in list(pref) if k in JUDGE_LEGACY}
        if not moved:
            return data
        judge = dict(data.get("judge") or {})
        both = sorted(k for k in moved if k in judge and judge[k] != moved[k])
        if both:
            raise ValueError(f"judge.{both[0]} and its old name under preferences: are both set; "
                             f"keep judge.{both[0]}")
        moved = {k: v for k, v in moved.items() if v is not None or k in judge}
        return {**data, "preferences": pref, "judge": {**moved, **judge}}

    @field_validator("run_dir")
    @classmethod
    def _run_dir_path(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty; give a folder (for example runs/my-job)")
        return v

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        v = [STAGE_ALIASES.get(s, s) for s in v]
        bad = [s for s in v if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; choose from {list(STAGES)}")
        if not v:
            raise ValueError("no stages given")
        return [s for s in STAGES if s in v]  # always in the order data flows

    @model_validator(mode="after")
    def _cross_checks(self) -> "JobConfig":
        e = self.engine
        rl = self.rl
        if rl.weight_sync == "nccl" and (e.num_gpus_per_actor == 0 or not rl.use_gpu):
            raise ValueError("rl.weight_sync=nccl needs GPUs on both sides (engine."
                             "num_gpus_per_actor > 0 and rl.use_gpu: true); on CPUs use gloo "
                             "(the same broadcast) or object_store")
        if rl.colocate and rl.num_workers != e.num_actors:
            raise ValueError(f"rl.colocate needs rl.num_workers == engine.num_actors (one learner "
                             f"rank per engine bundle); got {rl.num_workers} and {e.num_actors}")
        if rl.colocate and e.tensor_parallel_size > 1:
            raise ValueError("rl.colocate shares one GPU between an engine and a learner rank: "
                             "it needs engine.tensor_parallel_size 1")
        if rl.colocate and e.num_gpus_per_actor and e.gpu_memory_utilization > 0.5:
            raise ValueError("rl.colocate on GPUs shares each GPU between an engine and a learner "
                             "rank: set engine.gpu_memory_utilization <= 0.5")
        if rl.async_mode and rl.max_staleness < 1:
            raise ValueError("rl.async_mode needs rl.max_staleness >= 1 (its rollouts are one "
                             "version behind the learner)")
        if self.judge.engine:
            self.judge_engine()
        for sec in ("sft", "reward", "dpo", "rl"):
            t: TrainCfg = getattr(self, sec)
            if t.zero_stage == 3 and t.offload_params and not t.offload_optimizer:
                raise ValueError(f"{sec}.offload_params needs {sec}.offload_optimizer")
        return self

    def weight_sync(self) -> str:
        """rl.weight_sync with auto resolved: nccl when the learner and the engines are on GPUs,
        gloo when both are on CPUs, else the object store."""
        if self.rl.weight_sync != "auto":
            return self.rl.weight_sync
        gpu_engines = self.engine.num_gpus_per_actor > 0
        if gpu_engines != self.rl.use_gpu:
            return "object_store"
        return "nccl" if gpu_engines else "gloo"

    def judge_engine(self) -> EngineCfg:
        """The engine section for the separate judge's actors: `engine` with judge.engine's
        fields over it."""
        over = self.judge.engine
        try:
            return EngineCfg.model_validate({**self.engine.model_dump(), **over})
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"])
            msg = ("not an engine field (judge.engine takes the fields of `engine`: "
                   f"{', '.join(EngineCfg.model_fields)})" if first["type"] == "extra_forbidden"
                   else first["msg"].removeprefix("Value error, "))
            where = f"judge.engine.{key}: " if key else "judge.engine."
            raise ValueError(where + msg) from None  # a cross-field message names its field

    def digest(self, *sections: str) -> str:
        """Stable digest of the whole config, or of the named sections only (stage resume)."""
        data = self.model_dump(mode="json")
        if sections:
            data = {k: data[k] for k in sections}
        for name, value in data.items():  # timeouts and the like do not change what a stage makes
            sec = getattr(self, name, None)
            if isinstance(sec, BaseModel) and isinstance(value, dict):
                data[name] = {k: v for k, v in value.items() if not _operational(type(sec), k)}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _operational(model: type[BaseModel], name: str) -> bool:
    """A field marked operational (json_schema_extra={"operational": True}): how a stage runs,
    not what it makes; left out of digests so that changing it (or adding it) keeps a resume."""
    extra = getattr(model.model_fields.get(name), "json_schema_extra", None)
    return isinstance(extra, dict) and bool(extra.get("operational"))


def _model_at(loc: list[str]):
    """The pydantic model a location points into (JobConfig, a section), or None."""
    model = JobConfig
    for part in loc:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def error_location(first: dict) -> tuple[list[str], str]:
    """(dotted location, message) of a validation error. A cross-field check names its field at
    the start of its message ("samples_per_prompt: ..."), which extends the location."""
    loc = [str(p) for p in first["loc"]]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        owner = _model_at(loc[:-1])
        known = list(owner.model_fields) if owner else []
        near = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        msg = f"unknown field; {hint}{'.'.join(loc[:-1]) or 'the job'} takes: {', '.join(known)}"
    else:
        head, sep, rest = msg.partition(": ")
        owner = _model_at(loc)
        if sep and owner is not None and head in owner.model_fields:
            loc, msg = loc + [head], rest
    return loc, msg


def _format_validation(err: ValidationError, source: str) -> str:
    loc, msg = error_location(err.errors()[0])
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {'.'.join(loc) or '(top level)'}: {msg}{more}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """'sl_cai.num_rounds=2' -> (['sl_cai', 'num_rounds'], 2); values are parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for p in path[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {p} is not a section")
        node = nxt
    node[path[-1]] = value


def read_job_file(path: str | Path | None, _depth: int = 0) -> tuple[dict, str]:
    """Raw YAML mapping of a job file (None: the packaged default job) and its display name. A
    file with `extends: NAME` is that job file with this one's fields over it."""
    if path is None:
        path = PACKAGED_JOBS / "default.yaml"
    elif not Path(path).exists() and (PACKAGED_JOBS / f"{path}.yaml").exists():
        path = PACKAGED_JOBS / f"{path}.yaml"
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: job file not found (give a YAML path, or one of "
                          f"{sorted(x.stem for x in PACKAGED_JOBS.glob('*.yaml'))})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}:{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the job file must be a mapping of sections, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is not None:  # another job file (a path beside this one, or a packaged name)
        if _depth >= 8:
            raise ConfigError(f"{p}: extends: more than 8 levels (a cycle?)")
        near = p.parent / str(parent)
        base, _ = read_job_file(near if near.is_file() else str(parent), _depth + 1)
        data = deep_merge(base, data)
    return data, str(p)


def deep_merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k),
                                                                             dict) else v
    return out


LEGACY_RL_FIELDS = {"reward_fn": "reward"}


def legacy_rl_section(data: dict, source: str) -> None:
    """An old job file's `ppo:` section becomes `rl:` with algorithm ppo (its fields keep their
    meaning: reward_fn is rl.reward, ppo_epochs rl.update_epochs, and micro_batch_size, which was
    the rollouts per optimizer step, also sets rl.mini_batch_size)."""
    if "ppo" not in data:
        return
    if "rl" in data:
        raise ConfigError(f"{source}: both `ppo:` and `rl:` sections; `ppo:` is the old name of "
                          f"`rl:`, keep one")
    sec = data.pop("ppo") or {}
    if not isinstance(sec, dict):
        raise ConfigError(f"{source}: ppo: must be a mapping of fields")
    sec = {LEGACY_RL_FIELDS.get(k, k): v for k, v in sec.items()}
    sec.setdefault("algorithm", "ppo")
    if "micro_batch_size" in sec:
        sec.setdefault("mini_batch_size", sec["micro_batch_size"])
    data["rl"] = sec


def legacy_override(path: list[str]) -> list[str]:
    """--set ppo.reward_fn=short -> rl.reward; --set preferences.judge_model=M -> judge.model."""
    if len(path) > 1 and path[0] == "preferences" and path[1] in JUDGE_LEGACY:
        return ["judge", JUDGE_LEGACY[path[1]]] + path[2:]
    if path and path[0] == "ppo":
        return ["rl"] + [LEGACY_RL_FIELDS.get(path[1], path[1])] + path[2:] if len(path) > 1 \
            else ["rl"]
    return path


def load_job(path: str | Path | None = None, overrides: list[str] = (), **flags: Any) -> JobConfig:
    """Load, override and validate. `flags` are the CLI shortcuts (model, prompts, limit, run_dir,
    stages), applied after the --set overrides. Raises ConfigError naming the field."""
    data, source = read_job_file(path)
    legacy_rl_section(data, source)
    for item in overrides:
        key, value = parse_override(item)
        apply_override(data, legacy_override(key), value)
    shortcuts = {
        "model": ["model", "name"], "prompts": ["prompts", "red_team"],
        "limit": ["prompts", "limit"], "run_dir": ["run_dir"], "stages": ["stages"],
    }
    for key, value in flags.items():
        if value is None:
            continue
        if key == "prompts":
            value = [value] if isinstance(value, str) else list(value)
        if key == "stages" and isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        if key == "limit" and value is not None and value < 1:
            raise ConfigError(f"--limit {value}: prompts.limit must be at least 1")
        apply_override(data, shortcuts[key], value)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        loc, _ = error_location(err.errors()[0])
        for item in overrides:  # blame the --set that introduced the bad value, if one did
            path = list(legacy_override(parse_override(item)[0]))
            n = min(len(path), len(loc))  # the --set's path lies under the error, or above it
            if n and path[:n] == list(loc[:n]):
                source = f"--set {item}"
        for key, value in flags.items():  # ... or the flag (--stages, --run-dir, ...)
            if value is not None and tuple(shortcuts[key]) == tuple(loc[:len(shortcuts[key])]):
                source = f"--{key.replace('_', '-')} {value}"
        raise ConfigError(_format_validation(err, source)) from None
