"""PPO on the tiny model: a learning test with a programmatic reward (short answers), sync and async,
and a rollout engine killed mid-iteration. Real Ray, vLLM and DeepSpeed."""

import json

import pytest

from cai_ray import pipeline
from cai_ray.config import load_job
from cai_ray.rundir import read_jsonl

pytestmark = pytest.mark.integration

PPO = ["ppo.reward_fn=short", "ppo.iterations=14", "ppo.prompts_per_iter=8",
       "ppo.samples_per_prompt=4", "ppo.max_new_tokens=16", "ppo.lr=5e-4",
       "ppo.critic_lr=1e-3", "ppo.kl_coef=0.01", "ppo.ppo_epochs=2", "ppo.micro_batch_size=16",
       "ppo.checkpoint_every=5", "ppo.zero_stage=2"]


def ppo_job(run_dir, *extra):
    return load_job("tiny", PPO + list(extra), run_dir=str(run_dir), stages="ppo", limit=16)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_reward_rises(ray_cluster, tmp_path, mode):
    job = ppo_job(tmp_path / "run", f"ppo.async_mode={mode == 'async'}")
    res = pipeline.run(job, quiet=True)["ppo"]
    assert res["status"] == "complete", res
    rows = read_jsonl(tmp_path / "run" / "ppo" / "metrics.jsonl")
    assert len(rows) == 14
    early = sum(r["reward/mean"] for r in rows[:3]) / 3
    late = sum(r["reward/mean"] for r in rows[-3:]) / 3
    assert late > early + 0.2, [round(r["reward/mean"], 3) for r in rows]
    assert max(r["kl/mean"] for r in rows) < 20.0
    assert all(r["policy_version"] == r["iteration"] for r in rows)
    if mode == "async":
        assert all(r["stale_refused"] == 0 for r in rows)
        assert any(r["timing/overlapped_generate_s"] > 0 for r in rows)
    assert (tmp_path / "run" / "ppo" / "ppo.png").stat().st_size > 1000
    assert (tmp_path / "run" / "ppo" / "model" / "config.json").exists()
    result = json.loads((tmp_path / "run" / "ppo" / "result.json").read_text())
    assert result["reward_last"] == rows[-1]["reward/mean"]


def test_killed_rollout_engine_and_resume(ray_cluster, tmp_path):
    """Two rollout engines; one is SIGKILLed after the first iteration. The run finishes; a second
    run on the same directory resumes from the last checkpoint instead of starting over."""
    import os
    import signal
    import threading
    import time

    job = ppo_job(tmp_path / "run", "ppo.iterations=4", "ppo.checkpoint_every=2",
                  "engine.num_actors=2", "ppo.max_new_tokens=32")
    killed = []

    def killer():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            metrics = tmp_path / "run" / "ppo" / "metrics.jsonl"
            if metrics.exists() and metrics.read_text().count("\n") >= 1:
                pids = _engine_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = pipeline.run(job, quiet=True)["ppo"]
    t.join(timeout=1)
    assert killed and res["status"] == "complete", res
    rows = read_jsonl(tmp_path / "run" / "ppo" / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert sum(r["actor_failures"] for r in rows) >= 1

    # As if the driver died after iteration 3: the iteration-4 checkpoint never got written.
    import shutil

    shutil.rmtree(tmp_path / "run" / "ppo" / "checkpoints" / "iter_4")
    res2 = pipeline.run(job, quiet=True)["ppo"]
    assert res2["status"] == "complete" and res2["result"]["resumed_from"] == 2
    assert [r["iteration"] for r in read_jsonl(tmp_path / "run" / "ppo" / "metrics.jsonl")] == \
        [1, 2, 3, 4]


def _engine_pids():
    import subprocess

    out = subprocess.run(["pgrep", "-f", "ray::EngineWorker"], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def test_colocated_roles_finish_a_run(ray_cluster, tmp_path):
    """ppo.colocate: the learner rank lives in the rollout engine's bundle (and the reference and
    reward roles beside it); a short run completes and its weights reach the engine."""
    job = ppo_job(tmp_path / "run", "ppo.colocate=true", "ppo.iterations=2",
                  "ppo.weight_sync=gloo")
    res = pipeline.run(job, quiet=True)["ppo"]
    assert res["status"] == "complete", res
    rows = read_jsonl(tmp_path / "run" / "ppo" / "metrics.jsonl")
    assert [r["weights_version"] for r in rows] == [1, 2]
    assert all(r["weight_sync/fallback"] == 0 for r in rows)
