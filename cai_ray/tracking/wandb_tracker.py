"""Weights & Biases: the job is a group (named after the job and a short id kept in the manifest)
with one run for the job (the resolved job as its config, each stage's key figures in its summary,
the manifest) and one run per stage (job_type = the stage: per-step metrics, key figures, plots
and report as an artifact). offline mode writes run folders under RUN_DIR/wandb that
`wandb sync RUN_DIR/wandb/offline-run-*` uploads later.

    tracking:
      wandb: {mode: offline, project: cai-ray}
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from cai_ray.tracking import register_tracker


class WandbTracker:
    def __init__(self, cfg, run_dir: Path):
        self.cfg = cfg
        self.dir = Path(cfg.dir) if cfg.dir else run_dir / "wandb"
        self.group = ""
        self.job = None
        self.stages: dict = {}

    def _init(self, run_id: str, name: str, job_type: str, config: dict | None = None):
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=self.cfg.project, entity=self.cfg.entity, mode=self.cfg.mode,
            dir=str(self.dir), group=self.group, job_type=job_type, name=name, id=run_id,
            resume="allow", config=config,
            settings=wandb.Settings(reinit="create_new", silent=True, console="off",
                                    x_disable_stats=True, x_disable_machine_info=True))

    def open_job(self, name: str, params: dict[str, str], ids: dict | None) -> dict:
        kept = ids or {}
        self.group = kept.get("group") or f"{name}-{uuid.uuid4().hex[:8]}"
        run_id = kept.get("run_id") or self.group
        self.job = self._init(run_id, name, "job", config=None if kept else params)
        ids = {"group": self.group, "run_id": run_id, "project": self.cfg.project,
               "mode": self.cfg.mode, "dir": str(self.dir)}
        url = getattr(self.job, "url", None)  # online: the run's page; offline: none
        ids["url"] = url or f"{self.dir / 'wandb'} (offline; upload: wandb sync " \
                            f"{self.dir / 'wandb'}/offline-run-*)"
        return ids

    def open_stage(self, stage: str, ids: dict | None) -> dict:
        run_id = (ids or {}).get("run_id") or f"{self.group}-{stage}-{uuid.uuid4().hex[:6]}"
        self.stages[stage] = self._init(run_id, stage, stage)
        return {"run_id": run_id}

    def log_metrics(self, stage: str, rows: list[tuple[int, dict[str, float]]]) -> None:
        run = self.stages[stage]
        for step, d in rows:
            run.log(d, step=step)

    def log_figures(self, stage: str, figures: dict[str, float]) -> None:
        if figures:
            self.stages[stage].summary.update(figures)
            self.job.summary.update({f"{stage}/{k}": v for k, v in figures.items()})

    def log_artifacts(self, stage: str | None, paths: list[Path]) -> None:
        import wandb

        if not paths:
            return
        run = self.stages[stage] if stage else self.job
        art = wandb.Artifact(re.sub(r"[^\w\-.]", "_", f"{self.group}-{stage or 'job'}"),
                             type="cai-ray-" + (stage or "job"))
        for p in paths:
            art.add_file(str(p))
        run.log_artifact(art)

    def close_stage(self, stage: str, status: str) -> None:
        self.stages.pop(stage).finish(exit_code=0 if status == "FINISHED" else 1)

    def close_job(self, status: str) -> None:
        self.job.finish(exit_code=0 if status == "FINISHED" else 1)


register_tracker("wandb", WandbTracker, "wandb", lambda cfg: bool(cfg and cfg.mode != "off"))
