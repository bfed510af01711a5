"""The preferences stage with a separate judge model on its own engine actors (tiny model, real
Ray and vLLM): the judge's resources come from preferences.judge_engine, not from `engine`."""

import pytest

from cai_ray import pipeline
from cai_ray.config import load_job
from cai_ray.rundir.files import read_jsonl

pytestmark = pytest.mark.integration


@pytest.mark.slow  # in `make test-slow` (CI time)
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


def test_resume_judges_the_pairs_a_kill_left_and_samples_nothing_again(ray_cluster, tmp_path):
    """3 answers per prompt: 3 pairs each. The progress log is cut back to what a kill in the
    middle of judging leaves (every prompt's answers, and one pair of each prompt judged); the
    resumed stage judges exactly the missing pairs, samples nothing again, repeats nothing."""
    import json

    run = tmp_path / "run"
    job = load_job("tiny", ["start_policy=base", "preferences.num_samples=3",
                            "preferences.temperature=1.5", "preferences.max_new_tokens=24",
                            "engine.backend=hf"],  # the stage's resume logic, not vLLM's
                   run_dir=str(run), stages="preferences", limit=6)
    first = pipeline.run(job, quiet=True)["preferences"]["result"]
    prog = run / "preferences" / "progress.jsonl"
    rows = read_jsonl(prog)
    pairs = [r for r in rows if "chosen" in r]
    assert first["pairs"] == len(pairs) > 0 and first["progress_repeats"] == 0
    assert first["judge_check"]["cached"] is False  # tiny's gate: warn
    keep_one = {}
    for r in pairs:
        keep_one.setdefault(r["prompt_id"], r["id"])
    cut = [r for r in rows if "chosen" not in r or r["id"] in keep_one.values()]
    prog.write_text("".join(json.dumps(r) + "\n" for r in cut))
    lost = len(pairs) - len(keep_one)
    assert lost > 0

    again = pipeline.run(job, quiet=True)["preferences"]["result"]
    assert again["prompts_sampled_now"] == 0 and again["generated_tokens"] == 0
    assert again["pairs_judged_now"] == lost
    assert again["pairs"] == first["pairs"] and again["progress_repeats"] == 0
    assert again["judge_check"]["cached"] is True  # the judge is not checked again
    done = read_jsonl(prog)
    ids = [r["id"] for r in done]
    assert len(ids) == len(set(ids))
    assert sorted(r["id"] for r in done if "chosen" in r) == sorted(r["id"] for r in pairs)
