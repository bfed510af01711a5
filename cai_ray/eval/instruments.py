"""Instruments that measure the parts of the method against labels (`cai-ray eval judge |
reward | refusals`, cli/eval.py):

    judge_quality(judge, labelled_pairs(path, 64))     accuracy, calibration, position bias
    reward_accuracy(model_path, pairs)                 a reward model's pairwise accuracy
    refusal_labels(data, answer_field)                 refusal rate, each row's label

--data takes HH-RLHF (`chosen` and `rejected` transcripts that share every turn but the last
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
    calibration on the same (ECE, accuracy by confidence bucket) and position bias
    (principle-level pairs whose two orders pick different answers)."""
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
            "ties": len(pairs) - len(decided),
            "verdicts": sum(len(v) for j in jds for v in j.orders.values()),
            "position_bias": disagreements / n_orders if n_orders else None,
            "unparsed_verdicts": sum(getattr(j, "unparsed", 0) for j in jds),
            "mean_p_label": sum(p_truth) / len(p_truth),
            "ece": expected_calibration_error(dp, dt), "calibration": calibration(dp, dt)}


def reward_accuracy(model_path: str, pairs: list[dict]) -> dict:
    from cai_ray.algos.ratings import rate
    from cai_ray.rewards.model import RewardScorer

    scorer = RewardScorer(model_path)
    first = scorer.score([p["conversation"] + [{"role": "assistant", "content": p["first"]}]
                          for p in pairs])
    second = scorer.score([p["conversation"] + [{"role": "assistant", "content": p["second"]}]
                           for p in pairs])
    right = [(a > b) == p["first_better"] and a != b for a, b, p in zip(first, second, pairs)]
    margin = [(a - b) if p["first_better"] else (b - a) for a, b, p in zip(first, second, pairs)]
    return {"pairs": len(pairs), "accuracy": rate(right),
            "mean_margin": sum(margin) / len(pairs)}


def read_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, row) of a JSONL or CSV file; a bad line is one InputError naming it."""
    import csv

    p = Path(path)
    if not readers.exists(p):
        raise InputError(f"{p}: no such file (pass --data FILE, JSONL or CSV)")
    text = readers.read_text(p, "data", "answers file")
    if p.suffix.lower() == ".csv":
        return [(k + 2, row) for k, row in enumerate(csv.DictReader(text.splitlines()))]
    rows = list(jsonl_rows(p, text))
    for k, row in rows:
        if not isinstance(row, dict):
            raise InputError(f"{p}: line {k}: a JSON object with named fields is needed")
    return rows


TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes", "refusal", "refused", "refuse"}, \
    {"0", "false", "no", "compliance", "complied", "comply", "answer"}


def _flag(value, where: str) -> bool:
    word = str(value).strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise InputError(f"{where}: label {value!r} is neither a refusal (true/1/yes/refusal) nor "
                     f"an answer (false/0/no/compliance)")


def refusal_labels(data: str, answer_field: str = "answer", label_field: str | None = None,
                   labels_out: str | None = None) -> dict:
    """Label every row of `data` with the refusal detector; against label_field if given."""
    from cai_ray.algos.ratings import rate
    from cai_ray.eval import refusals as R

    rows = read_rows(data)
    if not rows:
        raise InputError(f"{data}: no rows")
    missing = [f for f in (answer_field,) if f not in rows[0][1]]
    if missing:
        raise InputError(f"{data}: line {rows[0][0]}: no field {missing[0]!r} (fields: "
                         f"{', '.join(rows[0][1])}); name the answer column with --answer-field")
    out, preds, truths = [], [], []
    for line, row in rows:
        if answer_field not in row:
            raise InputError(f"{data}: line {line}: no field {answer_field!r}")
        answer = row[answer_field] or ""
        if not isinstance(answer, str):
            raise InputError(f"{data}: line {line}: {answer_field}: expected text, got "
                             f"{readers.type_name(answer)}")
        pred = R.is_refusal(answer)
        preds.append(pred)
        rec = {**row, "refusal_pred": pred, "refusal_pattern": R.matched(answer),
               "empty": R.is_empty(answer)}
        if label_field:
            if label_field not in row:
                raise InputError(f"{data}: line {line}: no field {label_field!r} "
                                 f"(--label-field)")
            truths.append(_flag(row[label_field], f"{data}: line {line}"))
        out.append(rec)
    res = {"data": str(data), "rows": len(out), "refusal": rate(preds),
           "empty": rate([r["empty"] for r in out]),
           "mean_answer_chars": sum(len(r[answer_field] or "") for r in out) / len(out)}
    if truths:
        res["against_labels"] = R.scores(preds, truths)
    from cai_ray.rundir.files import write_jsonl_atomic

    dest = Path(labels_out or Path(data).with_suffix(".refusals.jsonl"))
    write_jsonl_atomic(dest, out)
    res["labels_written"] = str(dest)
    return res


def judge_for(job, actors=None):
    """The job's judge as `cai-ray eval judge` builds it (judges.open_judge: the base model, or
    judge.model on actors(path), or the server of an http judge)."""
    from cai_ray import judges, models
    from cai_ray.constitution import load_constitution

    const = load_constitution(job.constitution.path)
    const.require("judge", job.constitution.path)
    judges.check(job.judge)
    base = models.check(job.model.name, "model.name")
    return judges.open_judge(job.judge, const, default_model=base,
                             seed=job.seed, engine=job.engine, judge_engine=job.judge_engine(),
                             actors=actors)


def judge_on_pairs(job, pairs: list[dict]) -> dict:
    """The job's judge measured on labelled pairs (`cai-ray eval judge`): judge_quality."""
    from cai_ray import judges, models
    from cai_ray.engines.pool import EnginePool

    base = models.check(job.model.name, "model.name")
    actors = None
    judges.check(job.judge)  # before Ray starts
    if judges.own_engines(job.judge):
        from cai_ray.cluster import init_ray

        init_ray()
        engine = job.judge_engine() if job.judge.model else job.engine
        actors = lambda path: EnginePool.from_cfg(engine, job.model, path,  # noqa: E731
                                                  seed=job.seed, name="judge")
    setup = judge_for(job, actors)
    try:
        return {"judge": judges.describe(job.judge, Path(base).name),
                "method": job.judge.method, **judge_quality(setup.judge, pairs)}
    finally:
        setup.close()


