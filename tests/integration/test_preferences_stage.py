"""The preferences stage with a separate judge model on its own engine actors (tiny model, real
Ray and vLLM): the judge's resources come from preferences.judge_engine, not from `engine`."""

import pytest

from cai_ray import pipeline
from cai_ray.config import load_job
from cai_ray.rundir import read_jsonl

pytestmark = pytest.mark.integration


def test_separate_judge_on_its_own_actors(ray_cluster, tiny_model, tmp_path):
    job = load_job("tiny", ["start_policy=base", f"preferences.judge_model={tiny_model}",
                            "preferences.judge_engine={num_actors: 2, batch_size: 4}"],
                   run_dir=str(tmp_path / "run"), stages="preferences", limit=6)
    res = pipeline.run(job, quiet=True)["preferences"]["result"]
    assert res["judge_actors"] == 2 and job.engine.num_actors == 1
    assert res["timing/generate_s"] > 0 and res["timing/judge_s"] > 0
    rows = read_jsonl(tmp_path / "run" / "preferences" / "data.jsonl")
    pairs = [r for r in rows if "chosen" in r]
    assert pairs and len(pairs) == res["pairs"]
    judge_label = tiny_model.rstrip("/").split("/")[-1]
    assert {r["judge_model"] for r in pairs} == {judge_label}
    assert all(0.0 <= r["p_chosen"] <= 1.0 and [len(v) for v in r["orders"].values()] == [2]
               for r in pairs), pairs[0]
