"""Instruments that measure the parts of the method against labels (`cai-ray eval judge |
reward | refusals`, cli/eval.py):

    judge_quality(judge, labelled_pairs(path, 64))     accuracy, calibration, position bias
    reward_accuracy(model_path, pairs)                 a reward model's pairwise accuracy
    refusal_labels(data, answer_field)                 refusal rate, each row's label

judge_quality and labelled_pairs live with the judges (cai_ray/judges/quality.py).
"""

from __future__ import annotations

from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.judges.quality import judge_quality
from cai_ray.prompts.sources import jsonl_rows
from cai_ray.rundir import readers


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


TRUE_WORDS = {"1", "true", "yes", "refusal", "refused", "refuse", "full_refusal",
              "full refusal", "2_full_refusal"}
PARTIAL_WORDS = {"partial", "partial_refusal", "partial refusal", "3_partial_refusal"}
FALSE_WORDS = {"0", "false", "no", "compliance", "complied", "comply", "answer",
               "full_compliance", "full compliance", "1_full_compliance"}


def _label(value, where: str) -> str:
    """refusal, partial or compliance from a label cell (XSTest's names included)."""
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return "refusal"
    if word in PARTIAL_WORDS:
        return "partial"
    if word in FALSE_WORDS:
        return "compliance"
    raise InputError(f"{where}: label {value!r} is neither a refusal (true/1/yes/refusal), a "
                     f"partial refusal (partial) nor an answer (false/0/no/compliance)")


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
    out, preds, truths, kinds, labels = [], [], [], [], []
    for line, row in rows:
        if answer_field not in row:
            raise InputError(f"{data}: line {line}: no field {answer_field!r}")
        answer = row[answer_field] or ""
        if not isinstance(answer, str):
            raise InputError(f"{data}: line {line}: {answer_field}: expected text, got "
                             f"{readers.type_name(answer)}")
        k = R.kind(answer)
        pred = k != "compliance"
        preds.append(pred)
        kinds.append(k)
        rec = {**row, "refusal_pred": pred, "refusal_kind": k,
               "refusal_pattern": R.matched(answer), "empty": R.is_empty(answer)}
        if label_field:
            if label_field not in row:
                raise InputError(f"{data}: line {line}: no field {label_field!r} "
                                 f"(--label-field)")
            labels.append(_label(row[label_field], f"{data}: line {line}"))
            truths.append(labels[-1] != "compliance")
        out.append(rec)
    res = {"data": str(data), "rows": len(out), "refusal": rate(preds),
           "partial": rate([k == "partial" for k in kinds]),
           "empty": rate([r["empty"] for r in out]),
           "mean_answer_chars": sum(len(r[answer_field] or "") for r in out) / len(out)}
    if truths:
        res["against_labels"] = R.scores(preds, truths)
        if "partial" in labels:  # three classes given: how often the class is right
            res["against_labels"]["three_class_accuracy"] = sum(
                k == t for k, t in zip(kinds, labels)) / len(kinds)
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


