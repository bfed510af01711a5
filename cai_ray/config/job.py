"""The job file as one typed object: JobConfig assembles the sections of cai_ray/config/sections.py
(and rl.py), checks what spans sections, and computes the digests resume uses. Loading, `--set`
and error lines are in load.py; old keys are migrated in legacy.py; plugins in plugins.py.

    job = JobConfig.model_validate(data)       # ValidationError naming the field
    job.digest("sl_cai", "model")             # what a stage's resume compares
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from cai_ray.config import legacy
from cai_ray.config.judge import JudgeCfg
from cai_ray.config.plugins import load_plugins
from cai_ray.config.rl import RlCfg
from cai_ray.config.sections import (
    EXTRA_SECTIONS,
    ConstitutionCfg,
    DpoCfg,
    EngineCfg,
    EvalCfg,
    ModelCfg,
    PreferencesCfg,
    PromptsCfg,
    RayCfg,
    RewardCfg,
    ServeCfg,
    SftCfg,
    SlCaiCfg,
    TrainCfg,
    _Section,
)
from cai_ray.config.tracking import TrackingCfg

DEFAULT_STAGES = ("sl_cai", "sft", "preferences", "reward", "rl", "eval")
"""What a job runs when it names no stages: the paper's pipeline (RL-CAI). The packaged `dpo` job
runs sl_cai, sft, preferences, dpo, eval instead."""


class JobConfig(_Section):
    name: str = "cai"
    run_dir: str = "runs/default"
    seed: int = 0
    keep_previous: int = Field(1, ge=0)
    """A stage whose config changed moves its old output to RUN_DIR/.previous/<stage>-<time>; the
    newest this many per stage are kept there, older ones deleted (0: none kept)."""
    stages: list[str] = list(DEFAULT_STAGES)
    """Stages to run, by name (cai_ray/stages registry: checked and put in the order data flows
    when the run is planned)."""
    plugins: list[str] = []
    """Python modules (or .py files) imported before the job is validated, in the driver and in
    every actor: they register stages, judge methods, reward sources, estimators, policy losses
    and sections of their own (docs/extending.md)."""
    ext: dict[str, Any] = Field(default_factory=dict, repr=False)
    """Plugin sections (EXTRA_SECTIONS), validated by their models; in files and dumps they sit
    at the top level like any section (job.section(name))."""
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
    tracking: TrackingCfg = TrackingCfg()

    @model_validator(mode="before")
    @classmethod
    def _migrate_and_extend(cls, data: Any) -> Any:
        """Old keys under their current names; plugins imported; plugin sections set apart."""
        data = legacy.migrate(data)
        if not isinstance(data, dict):
            return data
        load_plugins(data.get("plugins") or [])
        ext = dict(data.get("ext") or {})
        for key in [k for k in data if k in EXTRA_SECTIONS and k not in cls.model_fields]:
            ext[key] = data[key]
        return {**{k: v for k, v in data.items() if k not in ext}, "ext": ext} if ext else data

    @field_validator("ext")
    @classmethod
    def _known_sections(cls, v: dict) -> dict:
        out = {}
        for name, value in v.items():
            if name not in EXTRA_SECTIONS:
                raise ValueError(f"{name}: no plugin registers this section")
            model = EXTRA_SECTIONS[name]
            out[name] = value if isinstance(value, model) else model.model_validate(value or {})
        return out

    @model_serializer(mode="wrap")
    def _flatten(self, handler) -> dict:
        data = handler(self)
        ext = data.pop("ext", None) or {}
        return {**data, **ext}

    def section(self, name: str) -> BaseModel:
        """A section by name: one of the job's own, or a plugin's."""
        if name in type(self).model_fields:
            return getattr(self, name)
        return self.ext[name] if name in self.ext else EXTRA_SECTIONS[name]()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        """A label (manifests, served model names), never a path: no separators, no `..`."""
        if not v.strip() or len(v) > 100:
            raise ValueError("give a short label (1-100 characters), e.g. my-job")
        if any(c in v for c in "/\\") or v in (".", "..") or any(ord(c) < 32 for c in v):
            raise ValueError(f"{v!r}: a label, not a path; use letters, digits, - _ . (no / or "
                             f"\\, not . or ..)")
        return v

    @field_validator("run_dir")
    @classmethod
    def _run_dir_path(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty; give a folder (for example runs/my-job)")
        return v

    @field_validator("stages")
    @classmethod
    def _some_stages(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("no stages given")
        return v

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
        if sections:  # a plugin's section the job leaves out: its defaults
            data = {k: data[k] if k in data else self.section(k).model_dump(mode="json")
                    for k in sections}
        for name, value in data.items():  # timeouts and the like do not change what a stage makes
            sec = self.ext.get(name) or getattr(self, name, None)
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
    loc = loc[1:] if loc[:1] == ["ext"] else loc  # a plugin's section sits at the top level
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        owner = _model_at(loc[:-1])
        known = [f for f in (owner.model_fields if owner else ()) if f != "ext"]
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


