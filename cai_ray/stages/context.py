"""What every stage receives: the validated job, the run directory, the constitution, the prompts,
and helpers to start engine actors and find the models earlier stages wrote."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai_ray.config import JobConfig
from cai_ray.config.sections import EngineCfg
from cai_ray.constitution import Constitution
from cai_ray.prompts.sources import Prompt, PromptSet, split_heldout
from cai_ray.rundir.layout import RunDir

log = logging.getLogger("cai_ray")


@dataclass
class Context:
    job: JobConfig
    run: RunDir
    constitution: Constitution
    red_team: PromptSet
    helpful: PromptSet
    base_model: str
    """Resolved folder (or hub id) of job.model.name."""
    quiet: bool = False
    notes: list[str] = field(default_factory=list)
    plan: Any = None
    """The stage graph's resolution (cai_ray/stages/graph.py Plan): who provides each input."""
    start_policy: str | None = None
    """Resolved job.start_policy: the policy when no stage of the run has made one."""
    stage: str = ""
    """The stage running now (set by the pipeline)."""

    # -- prompts -------------------------------------------------------------------------------
    def train_prompts(self, prompts: list[Prompt]) -> list[Prompt]:
        return split_heldout(prompts, self.job.prompts.eval_fraction)[0]

    def heldout_prompts(self, prompts: list[Prompt]) -> list[Prompt]:
        return split_heldout(prompts, self.job.prompts.eval_fraction)[1]

    # -- models written by earlier stages ------------------------------------------------------
    def stage_model(self, stage: str) -> str | None:
        folder = (self.run.path / stage / "model").resolve()  # actors run in other folders
        return str(folder) if (folder / "config.json").exists() else None

    def input_model(self, artifact: str) -> str | None:
        """The model folder of the stage that provides `artifact` to the running stage."""
        from cai_ray.stages.graph import START

        src = (self.plan.inputs.get(self.stage, {}) if self.plan else {}).get(artifact)
        if src == START:
            return self.start_policy or self.base_model
        return self.stage_model(src) if src else None

    def policy_model(self) -> str:
        """The current policy: the model of the newest policy-making stage before this one (sft,
        dpo, rl; cai_ray/stages/graph.py), or start_policy when the job names one."""
        got = self.input_model("policy")
        if got:
            return got
        if self.plan is not None and self.stage:
            from cai_ray.errors import InputError

            raise InputError(f"{self.stage}: the policy's model is missing from "
                             f"{self.run.path} (its stage is not complete)")
        return self.stage_model("rl") or self.stage_model("sft") or self.base_model

    def sft_model(self) -> str:
        return self.stage_model("sft") or self.base_model

    # -- engines -------------------------------------------------------------------------------
    def engine_pool(self, model_path: str, name: str = "engine", num_actors: int | None = None,
                    shared: dict | None = None, engine: EngineCfg | None = None,
                    wait: bool = True):
        """Engine actors for a model; `engine` overrides job.engine (the separate judge's own);
        wait=False: see EnginePool."""
        from cai_ray.engines.pool import EnginePool

        return EnginePool.from_cfg(engine or self.job.engine, self.job.model, model_path,
                                   seed=self.job.seed, name=name, num_actors=num_actors,
                                   shared=shared, wait=wait)

    def judge_pool(self, judge_path: str):
        """Engine actors for the separate judge model, on judge.engine's resources."""
        return self.engine_pool(judge_path, name="judge", engine=self.job.judge_engine())

    def progress(self, total: int, desc: str, initial: int = 0, unit: str = "prompt"):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                    disable=self.quiet, dynamic_ncols=True, mininterval=1.0,
                    leave=False)  # a bar while the work runs; its figures go to the summary


def model_label(path: str) -> str:
    p = Path(path)
    return p.name if p.exists() else path
