"""Measures of a judge against labelled pairs: the pairs (HH-RLHF, or a pairs JSONL, read and
validated here), and judge_quality: accuracy with its interval, ties, position bias and
calibration. `cai-ray eval judge` and the gate before labelling (gate.py) use both.

    pairs = labelled_pairs(path, 64)      # [{id, conversation, first, second, first_better}]
    judge_quality(judge, pairs)           # {accuracy: {rate, low, high, n}, ties, ece, ...}

A pairs file: HH-RLHF (`chosen` and `rejected` transcripts that share every turn but the last
assistant one; the human preferred `chosen`), a JSONL of `prompt` (or `conversation`, a list of
messages), `chosen`, `rejected`, or a JSONL of `prompt`/`conversation`, two answers (`answer_a`
and `answer_b`, or `answers: [a, b]`) and a `label` naming the better (a/b, 0/1, first/second).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.prompts.sources import SHARED_DATA, hh_messages, jsonl_rows
from cai_ray.rundir import readers

DEFAULT_HH = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
FIRST, SECOND = {"a", "0", "first", "1st", "answer_a"}, {"b", "1", "second", "2nd", "answer_b"}


class _Conversation(readers.Row):
    conversation: list[readers.Message]


def _conversation(row: dict, where: str) -> list[dict]:
    if row.get("conversation") is not None:
        path, _, at = where.rpartition(": ")
        conv = readers.validate(row, _Conversation, path, at).conversation
        return [m.model_dump() for m in conv]
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return [{"role": "user", "content": row["prompt"]}]
    raise InputError(f"{where}: no `prompt` (text) or `conversation` (messages)")


def _pair_from_row(row: dict, where: str, rid: str) -> dict | None:
    """{id, conversation, first, second, first_better} from one row of any supported format."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str) and "\n\nAssistant:" in chosen \
            and "prompt" not in row and "conversation" not in row:
        c, r = hh_messages(chosen), hh_messages(rejected)  # HH-RLHF transcripts
        if not c or not r or c[:-1] != r[:-1] or c[-1]["role"] != "assistant":
            return None
        conv, good, bad = c[:-1], c[-1]["content"], r[-1]["content"]
    elif isinstance(chosen, str) and isinstance(rejected, str):
        conv, good, bad = _conversation(row, where), chosen, rejected
    else:
        answers = row.get("answers") or [row.get("answer_a"), row.get("answer_b")]
        if not (isinstance(answers, list) and len(answers) == 2
                and all(isinstance(a, str) for a in answers)):
            raise InputError(f"{where}: give `chosen` and `rejected`, or two answers (`answer_a`, "
                             f"`answer_b` or `answers`) and a `label`")
        label = str(row.get("label", "")).strip().lower()
        if label not in FIRST | SECOND:
            raise InputError(f"{where}: label {row.get('label')!r} names neither answer (a/b, "
                             f"0/1, first/second)")
        return {"id": rid, "conversation": _conversation(row, where), "first": answers[0],
                "second": answers[1], "first_better": label in FIRST}
    if good.strip() == bad.strip():
        return None
    # chosen first on half of the pairs (by id), so one order's bias cannot pass for accuracy
    flip = hashlib.sha256(rid.encode()).digest()[0] % 2 == 1
    return {"id": rid, "conversation": conv, "first": bad if flip else good,
            "second": good if flip else bad, "first_better": not flip}


def labelled_pairs(path: str | Path, n: int) -> list[dict]:
    """Up to n labelled pairs from HH-RLHF or a pairs JSONL (rows that cannot be compared, such
    as identical answers or transcripts that differ before the last turn, are skipped)."""
    p = Path(path)
    if not readers.exists(p):
        raise InputError(f"{p}: no such file (pass --data: HH-RLHF or a pairs JSONL)")
    text = readers.read_text(p, "data", "labelled pairs")
    out = []
    for k, row in jsonl_rows(p, text):
        if len(out) >= n:
            break
        if not isinstance(row, dict):
            raise InputError(f"{p}: line {k}: a JSON object is needed")
        pair = _pair_from_row(row, f"{p}: line {k}", str(row.get("id", f"pair-{k}")))
        if pair:
            out.append(pair)
    return out


def hh_pairs(path: str | Path, n: int) -> list[dict]:
    """Up to n HH-RLHF rows as {id, conversation, chosen, rejected} (benchmarks use this)."""
    out = []
    for p in labelled_pairs(path, n):
        good, bad = (p["first"], p["second"]) if p["first_better"] else (p["second"], p["first"])
        out.append({"id": p["id"], "conversation": p["conversation"], "chosen": good,
                    "rejected": bad})
    return out


def judge_quality(judge, pairs: list[dict]) -> dict:
    """Accuracy on the pairs the judge decided (Wilson interval; ties, p = 0.5, counted apart),
    accuracy_all on every pair (a tie is a wrong answer: what the gate reads), calibration on the
    decided pairs (ECE, accuracy by confidence bucket) and position bias (principle-level pairs
    whose two orders pick different answers)."""
    from cai_ray.algos.labels import calibration
    from cai_ray.algos.ratings import expected_calibration_error, rate
    from cai_ray.judges import JudgeItem

    jds = judge.label([JudgeItem(p["id"], p["conversation"], p["first"], p["second"])
                       for p in pairs])
    preds, truths = [j.p_first for j in jds], [p["first_better"] for p in pairs]
    decided = [(q, t) for q, t in zip(preds, truths) if q != 0.5]  # a tie picks neither answer
    dp, dt = [q for q, _ in decided], [t for _, t in decided]
    n_orders = sum(len(j.orders.get(k, [])) == 2 for j in jds for k in j.orders)
    disagreements = sum(j.disagreements for j in jds)
    p_truth = [q if t else 1 - q for q, t in zip(preds, truths)]
    return {"pairs": len(pairs), "accuracy": rate([(q > 0.5) == t for q, t in decided]),
            "accuracy_all": rate([q != 0.5 and (q > 0.5) == t for q, t in zip(preds, truths)]),
            "ties": len(pairs) - len(decided),
            "verdicts": sum(len(v) for j in jds for v in j.orders.values()),
            "position_bias": disagreements / n_orders if n_orders else None,
            "unparsed_verdicts": sum(getattr(j, "unparsed", 0) for j in jds),
            "mean_p_label": sum(p_truth) / len(p_truth),
            "ece": expected_calibration_error(dp, dt), "calibration": calibration(dp, dt)}
