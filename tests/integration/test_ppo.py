"""PPO on the tiny model: a learning test with a programmatic reward (short answers), sync and async,
and a rollout engine killed mid-iteration. Real Ray, vLLM and DeepSpeed."""

import json

import pytest

from cai_ray import pipeline
from cai_ray.config import load_job
from cai_ray.rundir import read_jsonl

pytestmark = pytest.mark.integration

PPO = ["ppo.reward_fn=short", "ppo.iterations=14", "ppo.prompts_per_iter=8",
       "ppo.samples_per_prompt=2", "ppo.max_new_tokens=24", "ppo.lr=3e-4",
       "ppo.critic_lr=1e-3", "ppo.kl_coef=0.01", "ppo.ppo_epochs=2", "ppo.micro_batch_size=8",
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
    assert late > early + 0.15, [round(r["reward/mean"], 3) for r in rows]
    assert max(r["kl/mean"] for r in rows) < 20.0
    assert all(r["policy_version"] == r["iteration"] for r in rows)
    if mode == "async":
        assert all(r["stale_refused"] == 0 for r in rows)
        assert any(r["timing/overlapped_generate_s"] > 0 for r in rows)
    assert (tmp_path / "run" / "ppo" / "ppo.png").stat().st_size > 1000
    assert (tmp_path / "run" / "ppo" / "model" / "config.json").exists()
    result = json.loads((tmp_path / "run" / "ppo" / "result.json").read_text())
    assert result["reward_last"] == rows[-1]["reward/mean"]
