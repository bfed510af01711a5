"""DPO's stored reference log-probs (cai_ray/train/dpo.py): a trainer that finds them for its data
reads them back instead of running the reference again (a restarted or resumed DPO never computes
them from weights that have moved), and they belong to one data set only."""

import json

import pytest

from cai_ray.train.dpo import DpoTask, ref_path


class NoModel:
    """Any forward would be a recompute: fail loudly."""

    def eval(self):
        raise AssertionError("the reference was computed again")


def write_data(folder, n_train=3, n_eval=2):
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("eval", n_eval)):
        (folder / f"{split}.jsonl").write_text("".join(
            json.dumps({"prompt": f"q{split}{i}", "chosen": "a", "rejected": "b"}) + "\n"
            for i in range(n)))


def test_stored_reference_is_read_back_not_recomputed(tmp_path):
    write_data(tmp_path)
    path = ref_path(tmp_path)
    stored = [{"split": s, "i": i, "chosen": -1.0 - i, "rejected": -2.0 - i}
              for s, n in (("eval", 2), ("train", 3)) for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in stored))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    splits = {"train": [{} for _ in range(3)], "eval": [{} for _ in range(2)]}
    out = DpoTask(max_len=64).prepare(NoModel(), splits, str(tmp_path), micro=2, pad_id=0)
    assert [x["ref"] for x in splits["train"]] == [[-1.0, -2.0], [-2.0, -3.0], [-3.0, -4.0]]
    assert [x["ref"] for x in splits["eval"]] == [[-1.0, -2.0], [-2.0, -3.0]]
    assert out["ref/logps_chosen"] == pytest.approx(-2.0)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # read, never rewritten


def test_a_reference_file_of_other_data_is_not_used(tmp_path):
    write_data(tmp_path / "a")
    write_data(tmp_path / "b", n_train=4)
    assert ref_path(tmp_path / "a") != ref_path(tmp_path / "b")
    path = ref_path(tmp_path / "a")
    path.write_text(json.dumps({"split": "train", "i": 0, "chosen": 0.0, "rejected": 0.0}) + "\n")
    splits = {"train": [{} for _ in range(3)], "eval": [{} for _ in range(2)]}
    with pytest.raises(RuntimeError, match="1 reference rows for 5 pairs"):
        DpoTask(max_len=64).prepare(NoModel(), splits, str(tmp_path / "a"), micro=2, pad_id=0)
