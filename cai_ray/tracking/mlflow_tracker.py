"""MLflow: the job is a parent run (the resolved job as parameters, each stage's key figures as
`<stage>/<figure>`, the manifest), each stage a nested child run (its per-step metrics, its key
figures, its plots and report). Through MlflowClient, so nothing depends on a global active run.

    tracking:
      mlflow: http://127.0.0.1:5000          # or {uri: sqlite:///mlflow.db, experiment: cai-ray}
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from cai_ray.tracking import chunks, register_tracker

PARAM_CHARS = 6000  # MLflow's longest parameter value
BATCH_METRICS, BATCH_PARAMS = 1000, 100  # MLflow's log_batch limits


def key(name: str) -> str:
    """A metric or parameter name MLflow takes (letters, digits, _ - . space /)."""
    return re.sub(r"[^\w\-. /]", "_", name)[:250]


def local_artifacts(uri: str) -> str | None:
    """A SQLite store keeps a new experiment's artifacts in mlruns/ beside its database, not in
    MLflow's default ./mlruns of whatever folder the job was started from. A server decides."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()


class MlflowTracker:
    def __init__(self, cfg, run_dir: Path):
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # ours: one line
        from mlflow.tracking import MlflowClient

        self.uri = cfg.uri
        self.experiment = cfg.experiment
        self.client = MlflowClient(tracking_uri=self.uri)
        self.parent: str | None = None
        self.exp_id: str | None = None
        self.stages: dict[str, str] = {}

    def _exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            self.client.get_run(run_id)
            return True
        except Exception:
            return False

    def open_job(self, name: str, params: dict[str, str], ids: dict | None) -> dict:
        exp = self.client.get_experiment_by_name(self.experiment)
        self.exp_id = exp.experiment_id if exp else self.client.create_experiment(
            self.experiment, artifact_location=local_artifacts(self.uri))
        if ids and self._exists(ids.get("run_id")):  # --resume: the same run goes on
            self.parent = ids["run_id"]
            self.client.update_run(self.parent, status="RUNNING")
        else:
            from mlflow.entities import Param

            run = self.client.create_run(self.exp_id, run_name=name,
                                         tags={"cai_ray.job": name, "cai_ray.kind": "job"})
            self.parent = run.info.run_id
            items = sorted((key(k), v[:PARAM_CHARS]) for k, v in params.items())
            for part in chunks(items, BATCH_PARAMS):
                self.client.log_batch(self.parent, params=[Param(k, v) for k, v in part])
        ids = {"run_id": self.parent, "experiment_id": self.exp_id, "uri": self.uri}
        if self.uri.startswith(("http://", "https://")):  # the run's page in the MLflow UI
            ids["url"] = f"{self.uri.rstrip('/')}/#/experiments/{self.exp_id}/runs/{self.parent}"
        return ids

    def open_stage(self, stage: str, ids: dict | None) -> dict:
        if ids and self._exists(ids.get("run_id")):
            self.stages[stage] = ids["run_id"]
            self.client.update_run(ids["run_id"], status="RUNNING")
        else:
            run = self.client.create_run(self.exp_id, run_name=stage, tags={
                "mlflow.parentRunId": self.parent, "cai_ray.stage": stage,
                "cai_ray.kind": "stage"})
            self.stages[stage] = run.info.run_id
        return {"run_id": self.stages[stage]}

    def _metrics(self, run_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(key(k), v, now, step) for step, d in rows for k, v in d.items()]
        for part in chunks(ms, BATCH_METRICS):
            self.client.log_batch(run_id, metrics=part)

    def log_metrics(self, stage: str, rows: list[tuple[int, dict[str, float]]]) -> None:
        self._metrics(self.stages[stage], rows)

    def log_figures(self, stage: str, figures: dict[str, float]) -> None:
        if figures:
            self._metrics(self.stages[stage], [(0, figures)])
            self._metrics(self.parent, [(0, {f"{stage}/{k}": v for k, v in figures.items()})])

    def log_artifacts(self, stage: str | None, paths: list[Path]) -> None:
        run_id = self.stages[stage] if stage else self.parent
        for p in paths:
            self.client.log_artifact(run_id, str(p))

    def close_stage(self, stage: str, status: str) -> None:
        self.client.set_terminated(self.stages[stage], status=status)

    def close_job(self, status: str) -> None:
        self.client.set_terminated(self.parent, status=status)


register_tracker("mlflow", MlflowTracker, "mlflow", lambda cfg: bool(cfg and cfg.uri))
