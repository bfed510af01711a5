"""The paper's mixed preference model's data (cai_ray/stages/reward.py, stages/data.mix): human
comparisons (HH-RLHF harmless-base from ../shared/data standing in) mixed with AI-labelled pairs
at the requested fraction."""

import pytest

from cai_ray.errors import InputError
from cai_ray.stages.data import mix, split_rows
from cai_ray.stages.reward import human_rows


def ai_rows(n):
    return [{"id": f"p{i}#0-1", "prompt": f"q{i}", "chosen": "a", "rejected": "b",
             "p_chosen": 0.7, "source": "ai"} for i in range(n)]


@pytest.mark.parametrize("fraction, n_ai, n_human, want", [
    (0.5, 40, 100, (40, 40)), (0.25, 60, 100, (60, 20)), (0.75, 10, 100, (10, 30)),
    (0.5, 40, 10, (10, 10)),  # fewer human pairs than asked: the AI side shrinks to match
])
def test_the_mix_has_the_requested_fraction(fraction, n_ai, n_human, want):
    human = [{"id": f"human-{i}", "source": "human"} for i in range(n_human)]
    rows = mix(ai_rows(n_ai), human, fraction, seed=3)
    got = (sum(r["source"] == "ai" for r in rows), sum(r["source"] == "human" for r in rows))
    assert got == want
    assert got[1] / len(rows) == pytest.approx(fraction)
    assert len({r["id"] for r in rows}) == len(rows)
    assert mix(ai_rows(n_ai), human, fraction, seed=3) == rows  # the same draw for the seed


def test_hh_rlhf_stands_in_for_human_data_and_both_sides_reach_the_held_out_split(shared_data):
    human = human_rows(str(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz"), 48)
    assert len(human) == 48
    r = human[0]
    assert r["source"] == "human" and r["p_chosen"] == 1.0 and r["id"].startswith("human-")
    assert r["conversation"][-1]["role"] == "user" and r["chosen"] != r["rejected"]
    rows = mix(ai_rows(48), human, 0.5)
    train, evals = split_rows(rows, 0.25)
    assert {x["source"] for x in evals} == {"ai", "human"}
    assert {x["source"] for x in train} == {"ai", "human"}


def test_unusable_human_data_names_the_field(tmp_path):
    with pytest.raises(InputError, match="reward.human_data: .*nope.jsonl: no such file"):
        human_rows(str(tmp_path / "nope.jsonl"), 4)
    empty = tmp_path / "same.jsonl"
    empty.write_text('{"prompt": "p", "chosen": "a", "rejected": "a"}\n')
    with pytest.raises(InputError, match="no usable labelled pairs"):
        human_rows(str(empty), 4)
