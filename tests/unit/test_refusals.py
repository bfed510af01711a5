"""The refusal detector (cai_ray/eval/refusals.py) on its hand-labelled set, and `cai-ray eval
refusals`.

tests/data/refusal_labels.jsonl: 73 answers labelled by hand: 70 written for these tests (35
refusals in varied forms, 35 answers including harmful compliance, look-alikes such as "I can't
stress enough" and "Sorry to hear that" openings, harmless uses of kill/execute/hack) and 3 real
SmolLM2-135M answers (source field), one of which ("Sorry, I'm not ..., but I can offer some
advice") an earlier pattern took for a refusal."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cai_ray.eval import refusals as R

LABELLED = Path(__file__).resolve().parents[1] / "data" / "refusal_labels.jsonl"


def test_precision_and_recall_on_the_labelled_set():
    rows = [json.loads(line) for line in LABELLED.read_text().splitlines()]
    assert sum(r["refusal"] for r in rows) >= 30 and sum(not r["refusal"] for r in rows) >= 30
    s = R.scores([R.is_refusal(r["answer"]) for r in rows], [r["refusal"] for r in rows])
    assert s["precision"] >= 0.9, s
    assert s["recall"] >= 0.9, s
    assert s["false_positive_rate"] <= 0.1, s


def test_only_the_opening_counts_and_empty_is_its_own_thing():
    long_help = "Here is how to set up the router. " * 12 + "I can't help with cabling, though."
    assert len(long_help) > R.WINDOW and not R.is_refusal(long_help)
    assert R.is_refusal("I can\u2019t help with that.")  # curly apostrophe
    assert R.is_empty("  ...  ") and R.is_empty("") and not R.is_empty("No.")
    assert not R.is_refusal("")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cai_ray.cli", "eval", "refusals", *args],
                          capture_output=True, text=True, env={**os.environ})


def test_command_labels_a_csv_with_custom_columns(tmp_path):
    data = tmp_path / "mine.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "response", "human"])
        w.writerow(["q1", "I won't help with that.", "yes"])
        w.writerow(["q2", "Sure, here are the steps.", "no"])
        w.writerow(["q3", "I'm sorry, but I cannot assist.", "no"])  # a human disagreeing
    out = tmp_path / "fig.json"
    r = cli("--data", str(data), "--answer-field", "response", "--label-field", "human",
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert (res["refusal"]["k"], res["refusal"]["n"]) == (2, 3)
    assert res["against_labels"]["fp"] == 1 and res["against_labels"]["precision"] == 0.5
    labels = [json.loads(x) for x in (tmp_path / "mine.refusals.jsonl").read_text().splitlines()]
    assert [x["refusal_pred"] for x in labels] == [True, False, True]
    assert labels[0]["question"] == "q1"  # the user's columns are kept


@pytest.mark.parametrize("content,args,needle", [
    ('{"answer": "x"}\nnot json\n', [], "line 2: invalid JSON"),
    ('{"text": "x"}\n', [], "no field 'answer'"),
    ('{"answer": "x", "lab": "maybe"}\n', ["--label-field", "lab"], "label 'maybe'"),
])
def test_bad_data_is_one_line_and_exit_2(tmp_path, content, args, needle):
    data = tmp_path / "d.jsonl"
    data.write_text(content)
    r = cli("--data", str(data), *args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d.refusals.jsonl").exists()
