"""The `tracking:` section of the job file: which experiment trackers a run reports to
(cai_ray/tracking does the reporting)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cai_ray.config.sections import _Section

SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "databricks")
"""The tracking-URI schemes MLflow's stores take."""


class MlflowCfg(_Section):
    uri: str = ""
    """Tracking URI: a server (`http://127.0.0.1:5000`) or a local store (`sqlite:///runs.db`, a
    folder). Empty: off. `tracking.mlflow: URI` is short for `tracking.mlflow.uri: URI`. Put no
    user or password in it (they would land in the manifest): MLflow reads
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD / MLFLOW_TRACKING_TOKEN from the
    environment."""
    experiment: str = Field("cai-ray", min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _uri_alone(cls, data: Any) -> Any:
        return {"uri": data} if isinstance(data, str) else data

    @field_validator("uri")
    @classmethod
    def _a_tracking_uri(cls, uri: str) -> str:
        from urllib.parse import urlsplit

        if "://" not in uri:  # empty (off) or a folder
            return uri
        if uri.split("://", 1)[0] not in SCHEMES:
            raise ValueError(f"{uri!r} is not a tracking URI MLflow knows; give "
                             f"http://HOST:PORT, sqlite:///FILE or a folder")
        if urlsplit(uri).username or urlsplit(uri).password:
            raise ValueError("has a user or password in it, which would land in the manifest; "
                             "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")
        return uri


class WandbCfg(_Section):
    mode: Literal["off", "offline", "online"] = "off"
    """offline: a run folder under `dir` that `wandb sync` uploads later; online: W&B's servers
    (the key from WANDB_API_KEY or `wandb login`, never from the job file)."""
    project: str = Field("cai-ray", min_length=1)
    entity: str | None = None
    dir: str | None = None
    """Where W&B writes its run folders (default: RUN_DIR/wandb)."""


class TrackingCfg(_Section):
    """Experiment trackers: one parent run per job and one child run per stage, with the resolved
    job as parameters, every stage's per-step metrics, key figures and plots/report as artifacts
    (cai_ray/tracking). Any combination may be on."""

    tensorboard: bool = True
    """TensorBoard event files next to each training stage's metrics.jsonl (as before)."""
    mlflow: MlflowCfg = MlflowCfg()
    wandb: WandbCfg = WandbCfg()
