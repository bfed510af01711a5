"""The command line end to end on the tiny job: real Ray, vLLM and DeepSpeed, real files."""

import json
import os
import subprocess
import sys

import pytest

from cai_ray.rundir import read_jsonl

pytestmark = pytest.mark.integration


def cai(*args, timeout=1200):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "cai_ray.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


STAGES = ("sl_cai", "sft", "preferences", "reward", "ppo", "eval")


def test_tiny_job_every_stage(tmp_path):
    run = tmp_path / "run"
    res = cai("run", "tiny", "--run-dir", str(run), "--quiet")
    assert res.returncode == 0, res.stderr[-4000:]
    for stage in STAGES:
        assert stage in res.stdout and (run / stage / "result.json").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "complete" for s in STAGES)
    assert (run / "sft" / "model" / "model.safetensors").exists()
    prefs = read_jsonl(run / "preferences" / "data.jsonl")
    assert prefs and all(0.5 <= r["p_chosen"] <= 1.0 for r in prefs)
    assert prefs[0]["judge_model"] == "model"  # the SFT model judged (RUN_DIR/sft/model)
    rres = json.loads((run / "reward" / "result.json").read_text())
    assert rres["pairs_train"] > 0 and rres["soft_labels"]
    assert (run / "reward" / "model" / "config.json").exists()
    ppo = json.loads((run / "ppo" / "result.json").read_text())
    assert ppo["iterations"] == 2 and (run / "ppo" / "model" / "config.json").exists()
    ev = json.loads((run / "eval" / "result.json").read_text())
    assert 0 <= ev["harmless_win_rate_vs_sft"] <= 1 and ev["harmless_vs_base"]["n"] > 0
    assert (run / "eval" / "win_rates.png").exists()

    # --resume: every stage is complete under the same config, so nothing runs again
    again = cai("run", "tiny", "--run-dir", str(run), "--quiet", "--resume")
    assert again.returncode == 0 and again.stdout.count("skipped (complete)") == len(STAGES)
