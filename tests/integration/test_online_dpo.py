"""Online DPO (`dpo.online: true`, cai_ray/stages/online_dpo.py) on the tiny model, real Ray,
DeepSpeed and engine actors: iterations with weight sync, the held-out judge's figures, resume
from the last checkpoint (what a killed driver leaves), and a learning test with a rule ranker.
The rollout engines run on our transformers backend (HF), as the RL logic tests do."""

import json
import shutil

import pytest

from cai_ray import pipeline
from cai_ray.config import load_job
from cai_ray.rundir.files import read_jsonl

pytestmark = pytest.mark.integration
ONLINE = ["start_policy=base", "dpo.online=true", "engine.backend=hf", "judge.gate=off"]


def iterations_job(run):
    return load_job("tiny", ONLINE + ["dpo.lr=5e-3", "dpo.keep_checkpoints=3",
                                      "dpo.checkpoint_every=1", "dpo.samples_per_prompt=3",
                                      "judge.ranking=groupwise"],
                    run_dir=str(run), stages="dpo")


def test_iterations_sync_weights_and_log_their_figures(ray_cluster, tmp_path):
    """3 iterations, 3 answers per prompt ranked by the judge groupwise (every pair in both
    orders, Bradley-Terry per prompt): every iteration updates the policy and its engines
    (answers to the held-out prompts change from the reference's), and logs the pair's margin,
    the KL to the reference and the held-out win rate."""
    run = tmp_path / "run"
    job = iterations_job(run)
    res = pipeline.run(job, quiet=True)["dpo"]
    assert res["status"] == "complete", res
    rows = read_jsonl(run / "dpo" / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["algorithm"] == "online_dpo" and r["policy_version"] == r["iteration"]
        for key in ("dpo/margin", "dpo/accuracy", "kl/mean", "heldout/win_rate",
                    "heldout/win_rate_low", "heldout/win_rate_high", "heldout/position_bias",
                    "timing/weight_sync_s"):
            assert isinstance(r.get(key), float), (key, r)
        assert r["dpo/pairs"] >= 1
    assert rows[-1]["heldout/changed"] > 0  # the engines answer with the new weights
    # the ranking's cost: 3 pairs per prompt, 2 prompts an iteration, each pair in both orders
    # on 1 principle (tiny's judge) unless its two answers are the same
    first = rows[0]
    assert first["judge/pairs_judged"] + first["judge/ties_without_call"] == 6
    assert first["judge/judge_prompts"] == 2 * first["judge/pairs_judged"]
    assert rows[-1]["judge/pairs_judged"] + rows[-1]["judge/ties_without_call"] == 18
    assert rows[-1]["kl/mean"] != 0.0
    refs = read_jsonl(run / "dpo" / "reference_answers.jsonl")
    assert len(refs) == 2
    assert not (run / "dpo" / "sft_answers.jsonl").exists()  # groupwise: no reference answers
    result = json.loads((run / "dpo" / "result.json").read_text())
    assert result["online"] and result["ranker"] == "judge" and result["iterations"] == 3
    assert (run / "dpo" / "model" / "config.json").exists()


@pytest.mark.slow  # in CI the RL loop's resume runs in test_rl (the same loop, exactly)
def test_a_resumed_run_goes_on_from_the_last_checkpoint(ray_cluster, tmp_path):
    """Removing the last checkpoint (a driver killed before writing it) and running again
    resumes there, logs the same iterations, and does not sample the reference answers again."""
    run = tmp_path / "run"
    job = iterations_job(run)
    assert pipeline.run(job, quiet=True)["dpo"]["status"] == "complete"
    refs = read_jsonl(run / "dpo" / "reference_answers.jsonl")
    shutil.rmtree(run / "dpo" / "checkpoints" / "iter_3")
    again = pipeline.run(job, quiet=True)["dpo"]
    assert again["status"] == "complete" and again["result"]["resumed_from"] == 2
    rows2 = read_jsonl(run / "dpo" / "metrics.jsonl")
    assert [r["iteration"] for r in rows2] == [1, 2, 3]
    assert read_jsonl(run / "dpo" / "reference_answers.jsonl") == refs  # not sampled again


def test_a_rule_ranker_moves_the_policy_its_way(ray_cluster, tmp_path):
    """Ranked by the share of lowercase letters (a rule any policy can learn), the best and worst
    of 4 answers per prompt become DPO pairs; over 12 iterations the sampled answers' share
    rises well beyond the noise."""
    from test_rl import assert_reward_rose

    run = tmp_path / "run"
    job = load_job("tiny", ONLINE + ["dpo.ranker=share:abcdefghijklmnopqrstuvwxyz",
                                     "dpo.iterations=12", "dpo.prompts_per_iter=8",
                                     "dpo.samples_per_prompt=4", "dpo.lr=4e-3",
                                     "dpo.beta=0.1", "dpo.heldout_prompts=0",
                                     "dpo.checkpoint_every=10"],
                   run_dir=str(run), stages="dpo", limit=16)
    assert pipeline.run(job, quiet=True)["dpo"]["status"] == "complete"
    rows = read_jsonl(run / "dpo" / "metrics.jsonl")
    assert len(rows) == 12 and rows[0]["pairs/kept"] == 8 - rows[0]["pairs/groups_without_pair"]
    # an iteration whose answers all tie (the rule learned) has no pair and trains nothing, but
    # still reports its rewards
    assert all(r["skipped_update"] == (r["pairs/kept"] == 0) for r in rows)
    assert all("reward/mean" in r for r in rows)
    assert_reward_rose(rows)
