"""A real MLflow tracking server on 127.0.0.1 (SQLite store and artifact folder in a temporary
folder), and what a tracked run of the tiny job must leave in it and in W&B's offline folder."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(folder / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                return proc, uri
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (folder / "mlflow-server.log").read_text()[-3000:]
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("the MLflow server did not answer in 120 s")


def check_mlflow(uri: str, run: Path, stages: tuple[str, ...], rl_iterations: int) -> dict:
    """Parent and child runs, parameters, per-step metrics of every training stage, the RL
    history with one point per iteration, the report artifact: read back through MlflowClient.
    Returns what was read, for the test's report."""
    from mlflow.tracking import MlflowClient

    ids = json.loads((run / "manifest.json").read_text())["tracking"]["mlflow"]
    c = MlflowClient(uri)
    parent = c.get_run(ids["run_id"])
    assert parent.info.status == "FINISHED", parent.info.status
    assert parent.data.params["model.name"] and parent.data.params["rl.algorithm"] == "grpo"
    children = c.search_runs([ids["experiment_id"]],
                             f"tags.mlflow.parentRunId = '{ids['run_id']}'")
    by_stage = {r.data.tags["cai_ray.stage"]: r for r in children}
    assert set(by_stage) == set(stages), set(by_stage)
    assert all(r.info.status == "FINISHED" for r in by_stage.values())
    read = {"params": len(parent.data.params), "children": sorted(by_stage)}
    for stage, name in (("sft", "train/loss"), ("reward", "train/loss"), ("rl", "reward/mean")):
        hist = c.get_metric_history(by_stage[stage].info.run_id, name)
        steps = [m.step for m in hist]
        assert steps and steps == sorted(set(steps)), (stage, steps)  # once per step, resumed too
        read[f"{stage}:{name}"] = len(steps)
    assert read["rl:reward/mean"] == rl_iterations
    arts = {a.path for a in c.list_artifacts(by_stage["eval"].info.run_id)}
    assert "report.html" in arts, arts
    assert "manifest.json" in {a.path for a in c.list_artifacts(ids["run_id"])}
    assert "sft/train/loss_last" in parent.data.metrics
    read["eval artifacts"] = sorted(arts)
    return read


def wandb_records(folder: Path) -> list[dict]:
    """A W&B run folder's transaction log (run-*.wandb), one record per line, read by wandb's own
    reader: `wandb leet inspect --json`."""
    wandb = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb), "leet", "inspect", "--json", str(folder)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]


def check_wandb(run: Path, stages: tuple[str, ...], rl_iterations: int) -> dict:
    """W&B's offline run folders, one per stage and one for the job (a killed and resumed run
    writes a second folder with the same run id; `wandb sync` uploads both into one run): each
    stage's history, read back, has each step once; the RL run one row per iteration."""
    folders = sorted((run / "wandb" / "wandb").glob("offline-run-*"))  # in time order
    steps: dict[str, list[int]] = {}
    for folder in folders:
        recs = wandb_records(folder)
        (meta,) = [r["run"] for r in recs if r.get("type") == "run"]
        steps.setdefault(meta["job_type"], [])
        steps[meta["job_type"]] += [r["history"]["item"]["_step"] for r in recs
                                     if r.get("type") == "history"]
    assert set(stages) | {"job"} == set(steps), set(steps)
    for stage, seen in steps.items():
        assert seen == sorted(set(seen)), (stage, seen)  # each step once, resumed or not
    assert len(steps["rl"]) == rl_iterations and steps["sft"], steps
    sync = subprocess.run([str(Path(sys.executable).with_name("wandb")), "sync", "--dry-run",
                           *map(str, folders)], capture_output=True, text=True, timeout=120)
    assert f"Would sync {len(folders)} run(s)" in sync.stdout + sync.stderr, sync.stderr[-2000:]
    return {k: len(v) for k, v in steps.items()}
