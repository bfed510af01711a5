"""The refusal detector (cai_ray/eval/refusals.py) on its hand-labelled set, and `cai-ray eval
refusals`.

tests/data/refusal_labels.jsonl: 89 answers labelled by hand: 85 written for these tests (refusals
in varied forms, answers including harmful compliance, look-alikes such as "I can't stress
enough" and "Sorry to hear that" openings, harmless uses of kill/execute/hack; 15 with a `kind`:
the refusal styles of several model families written in our words, partial refusals, and
compliance that opens with a caveat) and 4 real SmolLM2-135M answers (source field), one of
them the apology-then-inability form an exclusion tuned on another model's answers once lost.

Other models' answers, labelled by people: $CAI_RAY_REFUSAL_DATA, a folder of XSTest-style CSVs
(`completion`, `final_label`: 1_full_compliance / 2_full_refusal / 3_partial_refusal), such as the
five models of the XSTest replication's new prompts (github.com/mdazizulaman/
XSTest-Replication-and-Extension, New_data/model_completions). The detector's patterns were
widened on two of them (TUNED) and are measured on the others; skipped where the folder is
absent (benchmarks/results/refusal_detector.md has the figures)."""

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


def test_the_idioms_of_other_model_families_and_partial_refusals():
    rows = [json.loads(line) for line in LABELLED.read_text().splitlines()]
    styled = [r for r in rows if "kind" in r]
    assert len(styled) >= 16 and {r["kind"] for r in styled} == {"refusal", "partial",
                                                                 "compliance"}
    wrong = [(r["style"], R.kind(r["answer"])) for r in styled if R.kind(r["answer"]) != r["kind"]]
    assert not wrong, wrong
    assert R.is_refusal(next(r["answer"] for r in styled if r["kind"] == "partial"))


TUNED = ("llama3.0", "mistrI")


def test_other_models_answers_labelled_by_people():
    import os

    folder = os.environ.get("CAI_RAY_REFUSAL_DATA")
    if not folder or not Path(folder).is_dir():
        pytest.skip("set CAI_RAY_REFUSAL_DATA to a folder of labelled completions CSVs")
    right = n = 0
    for f in sorted(Path(folder).glob("*.csv")):
        if any(t in f.name for t in TUNED):
            continue
        for row in csv.DictReader(f.open()):
            truth = row["final_label"] != "1_full_compliance"
            right += R.is_refusal(row["completion"] or "") == truth
            n += 1
    assert n >= 400
    assert right / n >= 0.9, (right, n)


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
