"""Tracking without a cluster: the follower that sends a stage's metrics.jsonl on (partial lines,
a file rewritten shorter, steps already sent), the job's parameters, the load-time checks, and the
MLflow tracker against a real local store (SQLite) read back with MlflowClient."""

from __future__ import annotations

import json

import pytest

from cai_ray import tracking
from cai_ray.cli import main
from cai_ray.config import load_job
from cai_ray.errors import InputError


def rows(*steps: int) -> str:
    return "".join(json.dumps({"step": s, "train/loss": 1.0 / s, "note": "x", "ok": True,
                               "nested": {"a": s}}) + "\n" for s in steps)


def test_follower_sends_whole_new_rows_once_on_their_step_axis(tmp_path):
    path, got = tmp_path / "metrics.jsonl", []
    f = tracking.Follower(path, got.extend, after=1)
    f.poll()  # no file yet: nothing, no error
    path.write_text(rows(1, 2) + '{"step": 3, "train/lo')  # step 1 was sent before; 3 half-written
    f.poll()
    assert got == [(2, {"train/loss": 0.5, "nested/a": 2.0})]  # numbers only, nested joined by /
    with open(path, "a") as fh:
        fh.write('ss": 0.25}\n')
    f.poll()
    assert [s for s, _ in got] == [2, 3]
    path.write_text(rows(1, 2, 3, 4))  # rewritten shorter then longer (RL's resume truncates)
    f.poll()
    path.write_text(rows(1, 2))
    f.poll()
    path.write_text(rows(1, 2, 3, 4, 5))
    f.poll()
    assert [s for s, _ in got] == [2, 3, 4, 5]


def test_a_failing_tracker_does_not_stop_the_follower(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(rows(1))

    def send(batch):
        raise ConnectionError("server gone")

    f = tracking.Follower(path, send, after=0)
    f.poll()  # logged as a warning, not raised
    assert f.last == 1


def test_params_are_the_resolved_job_flattened():
    job = load_job("tiny", ["rl.lr=3e-6"])
    params = tracking.params_of(job)
    assert params["rl.lr"] == "3e-06" and params["model.name"] == job.model.name
    assert params["tracking.mlflow.uri"] == "" and all(isinstance(v, str) for v in params.values())


def test_mlflow_shorthand_and_wandb_mode_from_set():
    job = load_job("tiny", ["tracking.mlflow=http://127.0.0.1:5999",
                            "tracking.wandb.mode=offline"])
    assert job.tracking.mlflow.uri == "http://127.0.0.1:5999"
    assert job.tracking.mlflow.experiment == "cai-ray"
    assert tracking.enabled(job) == ["mlflow", "wandb"]
    assert tracking.enabled(load_job("tiny", [])) == []


@pytest.mark.parametrize("value, says", [
    ("http://me:secret@127.0.0.1:5000", "MLFLOW_TRACKING_USERNAME"),
    ("ftp://127.0.0.1/x", "not a tracking URI"),
])
def test_bad_tracking_uris_exit_2_with_one_line(tmp_path, capsys, value, says):
    code = main(["run", "tiny", "--dry-run", "--run-dir", str(tmp_path / "run"),
                 "--set", f"tracking.mlflow={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0], err
    assert "secret" not in err[0]
    assert not (tmp_path / "run").exists()


def test_a_tracker_whose_package_is_missing_is_refused_at_load_time_with_the_install_line():
    tracking.register_tracker("nosuch", None, "cai_ray_no_such_package", lambda cfg: True)
    try:
        with pytest.raises(InputError, match=r"pip install 'cai-ray\[nosuch\]'"):
            tracking.check(load_job("tiny", []))
    finally:
        del tracking.TRACKERS["nosuch"]


def test_mlflow_tracker_parent_child_metrics_figures_and_resume(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from cai_ray.config.tracking import MlflowCfg
    from cai_ray.tracking.mlflow_tracker import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tr = MlflowTracker(MlflowCfg(uri=uri, experiment="unit"), tmp_path)
    ids = tr.open_job("job", {"rl.lr": "1e-06", "model.name": "tiny"}, None)
    sft = tr.open_stage("sft", None)
    tr.log_metrics("sft", [(1, {"train/loss": 2.0}), (2, {"train/loss": 1.5})])
    tr.log_figures("sft", {"train/loss_last": 1.5})
    (tmp_path / "plot.png").write_bytes(b"\x89PNG")
    tr.log_artifacts("sft", [tmp_path / "plot.png"])
    tr.close_stage("sft", "FINISHED")
    tr.close_job("KILLED")

    again = MlflowTracker(MlflowCfg(uri=uri, experiment="unit"), tmp_path)  # --resume
    assert again.open_job("job", {}, ids)["run_id"] == ids["run_id"]
    assert again.open_stage("sft", sft)["run_id"] == sft["run_id"]
    again.log_metrics("sft", [(3, {"train/loss": 1.2})])
    again.close_stage("sft", "FINISHED")
    again.close_job("FINISHED")

    c = MlflowClient(uri)
    parent, child = c.get_run(ids["run_id"]), c.get_run(sft["run_id"])
    assert parent.data.params == {"rl.lr": "1e-06", "model.name": "tiny"}
    assert parent.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == \
        ids["run_id"]
    hist = c.get_metric_history(sft["run_id"], "train/loss")
    assert [(m.step, m.value) for m in hist] == [(1, 2.0), (2, 1.5), (3, 1.2)]
    assert parent.data.metrics["sft/train/loss_last"] == 1.5
    assert [a.path for a in c.list_artifacts(sft["run_id"])] == ["plot.png"]
    assert (tmp_path / "mlruns").is_dir()  # beside the database, not in the folder we ran from


def test_console_shows_ours_and_errors_and_the_run_dir_log_has_everything(tmp_path, capsys):
    """Default console: cai-ray's warnings and anyone's errors; a library's warning and info only
    in RUN_DIR/logs/driver.log, with what came before the run directory opened written first.
    -v: everything on the console."""
    import logging

    from cai_ray.tracking import console

    console.setup(False)
    console.adopt_library_loggers()
    logging.getLogger("ray").warning("ray before the run directory")
    console.to_run_dir(tmp_path)
    logging.getLogger("vllm").info("vllm info")
    logging.getLogger("vllm").warning("vllm warning")
    logging.getLogger("deepspeed").error("deepspeed error")
    logging.getLogger("cai_ray.stages").warning("our warning")
    logging.getLogger("cai_ray.stages").info("our info")
    shown = capsys.readouterr().err.splitlines()
    assert shown == ["ERROR deepspeed: deepspeed error", "WARNING cai_ray.stages: our warning"]
    logged = [ln.split(" ", 2)[2] for ln in (tmp_path / "logs" / "driver.log").read_text()
              .splitlines()]
    assert logged == ["WARNING ray: ray before the run directory", "INFO vllm: vllm info",
                      "WARNING vllm: vllm warning", "ERROR deepspeed: deepspeed error",
                      "WARNING cai_ray.stages: our warning", "INFO cai_ray.stages: our info"]
    console.setup(True)
    logging.getLogger("vllm").info("now shown")
    assert capsys.readouterr().err.splitlines() == ["INFO vllm: now shown"]
