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


def test_tiny_job_through_reward(tmp_path):
    run = tmp_path / "run"
    res = cai("run", "tiny", "--run-dir", str(run), "--stages", "sl_cai,sft,preferences,reward",
              "--quiet")
    assert res.returncode == 0, res.stderr[-4000:]
    for stage in ("sl_cai", "sft", "preferences", "reward"):
        assert stage in res.stdout and (run / stage / "result.json").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "complete"
               for s in ("sl_cai", "sft", "preferences", "reward"))
    assert (run / "sft" / "model" / "model.safetensors").exists()
    prefs = read_jsonl(run / "preferences" / "data.jsonl")
    assert prefs and all(0.5 <= r["p_chosen"] <= 1.0 for r in prefs)
    assert prefs[0]["judge_model"] == "model"  # the SFT model judged (RUN_DIR/sft/model)
    rres = json.loads((run / "reward" / "result.json").read_text())
    assert rres["pairs_train"] > 0 and rres["soft_labels"]
    assert (run / "reward" / "model" / "config.json").exists()
