"""What `cai-ray serve` serves: a run directory's policy (its newest policy stage, or the one named)
and, on request, the run's reward model and judge; or any registry name or model folder. Resolved
and checked before Ray starts: a bad target is one line and exit 2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cai_ray.errors import InputError

log = logging.getLogger("cai_ray")


@dataclass(frozen=True)
class JudgeSpec:
    """What a /v1/judge replica builds its judge from (it crosses to the replica typed)."""

    model: str
    constitution: str
    """A constitution spec load_constitution accepts (the run's constitution.path)."""
    judge: object
    """The run's `judge:` section (a JudgeCfg): method and settings; it runs on the replica."""
    seed: int = 0


@dataclass
class ServeTarget:
    model: str
    """The policy's folder."""
    model_id: str
    """The name clients put in `model`."""
    source: str
    """Where it came from, for logs and /v1/models: 'runs/x: stage dpo', 'registry: NAME'."""
    job: object | None = None
    """The run's JobConfig (None for a bare model)."""
    stage: str | None = None
    reward_model: str | None = None
    judge: JudgeSpec | None = None


def policy_stages() -> list[str]:
    from cai_ray.stages.graph import producers_of

    return producers_of("policy")


def _model_folder(folder: Path, what: str) -> str:
    if (folder / "config.json").exists():
        return str(folder.resolve())
    if (folder / "adapter_config.json").exists():
        raise InputError(f"{what}: {folder} holds a LoRA adapter only (lora.save: adapter); "
                         f"rerun that stage with lora.save: merged to serve it")
    raise InputError(f"{what}: no model in {folder} (the stage is not complete)")


def _complete(manifest: dict, stage: str) -> bool:
    return manifest.get("stages", {}).get(stage, {}).get("status") == "complete"


def from_run_dir(run_dir: Path, stage: str | None, name: str | None,
                 want_score: bool, want_judge: bool) -> ServeTarget:
    from cai_ray.config.load import job_from_record
    from cai_ray.rundir.layout import RunDir

    manifest = RunDir(run_dir).manifest()  # InputError for a damaged one
    job = job_from_record(manifest.get("config"), f"{run_dir}/manifest.json",
                          run_dir=str(run_dir))
    policies = policy_stages()
    done = [s for s in policies if _complete(manifest, s)]
    if stage is None:
        if not done:
            raise InputError(f"{run_dir}: no complete policy stage ({', '.join(policies)}); "
                             f"run one, or serve a model with `cai-ray serve MODEL`")
        stage = done[-1]
    elif stage == "base":
        return from_model(job.model.name, name or f"{job.name}-base", want_score, want_judge,
                          job=job, run_dir=run_dir)
    elif stage not in policies:
        raise InputError(f"--stage {stage}: not a policy stage; choose from "
                         f"{', '.join(policies)} or base")
    elif stage not in done:
        raise InputError(f"--stage {stage}: not complete in {run_dir} (complete: "
                         f"{', '.join(done) or 'none'})")
    model = _model_folder(run_dir / stage / "model", f"{run_dir} stage {stage}")
    target = ServeTarget(model, name or f"{job.name}-{stage}", f"{run_dir}: stage {stage}", job,
                         stage)
    _attach_scorers(target, run_dir, manifest, want_score, want_judge)
    return target


def from_model(spec: str, name: str | None, want_score: bool, want_judge: bool, *,
               job=None, run_dir: Path | None = None) -> ServeTarget:
    from cai_ray import models

    path = models.check(spec, "the model to serve")
    if not Path(path).is_dir():
        raise InputError(f"{spec}: not a run directory, a model folder or a registry name "
                         f"(`cai-ray models list`); serving needs the model on this machine")
    target = ServeTarget(path, name or Path(spec).name, f"model: {spec}", job,
                         "base" if job else None)
    if want_score:
        raise InputError("--score: serves a run's reward model; give a run directory whose "
                         "reward stage is complete")
    if want_judge:
        from cai_ray.config import JobConfig

        job = job or JobConfig()
        target.judge = _judge_spec(job, path)
    return target


def _attach_scorers(target: ServeTarget, run_dir: Path, manifest: dict, want_score: bool,
                    want_judge: bool) -> None:
    job = target.job
    if want_score:
        rm = job.rl.reward_model
        if rm:
            from cai_ray import models

            target.reward_model = models.check(rm, "rl.reward_model")
        elif _complete(manifest, "reward"):
            target.reward_model = _model_folder(run_dir / "reward" / "model",
                                                f"{run_dir} stage reward")
        else:
            raise InputError(f"--score: {run_dir} has no complete reward stage (and no "
                             f"rl.reward_model); run `--stages reward` first")
    if want_judge:
        target.judge = _judge_spec(job, _judge_model(job, run_dir, manifest))


def _judge_model(job, run_dir: Path, manifest: dict) -> str:
    """The model the preferences stage judged with: judge.model, else the policy it
    read (the newest policy stage before it), else the base model."""
    from cai_ray import models

    if job.judge.model:
        return models.check(job.judge.model, "judge.model")
    from cai_ray.stages.registry import STAGES

    order = list(STAGES)
    before = [s for s in policy_stages() if order.index(s) < order.index("preferences")
              and _complete(manifest, s)]
    if before:
        return _model_folder(run_dir / before[-1] / "model", f"{run_dir} stage {before[-1]}")
    return models.check(job.model.name, "model.name")


def _judge_spec(job, model: str) -> JudgeSpec:
    from cai_ray import judges
    from cai_ray.constitution import load_constitution

    load_constitution(job.constitution.path).require("judge", job.constitution.path)
    if not judges.own_engines(job.judge):
        raise InputError(f"--judge: this run's judge is a server already "
                         f"({judges.describe(job.judge, model)}); clients can ask it directly")
    return JudgeSpec(model, job.constitution.path, job.judge, job.seed)


def resolve_target(spec: str, stage: str | None = None, name: str | None = None, *,
                   score: bool = False, judge: bool = False) -> ServeTarget:
    from cai_ray.rundir import storage

    if storage.is_uri(spec):  # a run directory on object storage: served from a local copy
        from cai_ray.rundir.layout import open_run_dir

        run = open_run_dir(spec)  # exit 2 when unreachable
        if not (run.path / "manifest.json").exists():
            raise InputError(f"{spec}: not a run directory (no manifest.json there)")
        n = run.remote.pull(run.path)
        log.warning("run directory %s: working copy %s (%d file(s) pulled)", spec, run.path, n)
        return from_run_dir(run.path, stage, name, score, judge)
    path = Path(spec).expanduser()
    if (path / "manifest.json").exists():
        return from_run_dir(path, stage, name, score, judge)
    if stage:
        raise InputError(f"--stage {stage}: {spec} is not a run directory (no manifest.json)")
    return from_model(spec, name, score, judge)
