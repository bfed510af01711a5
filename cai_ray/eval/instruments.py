"""Instruments that measure the parts of the method against labels.

    cai-ray eval judge    [--job FILE] [--data FILE] [--n 64]   judge accuracy, calibration, bias
    cai-ray eval reward   MODEL [--data FILE] [--n 256]         reward-model pairwise accuracy
    cai-ray eval refusals --data FILE [--answer-field F]        refusal rate, each row's label
    cai-ray eval compare  RUN_A RUN_B [--out DIR]               two runs' final policies

--data takes HH-RLHF (`chosen` and `rejected` transcripts that share every turn but the last
assistant one; the human preferred `chosen`), a JSONL of `prompt` (or `conversation`, a list of
messages), `chosen`, `rejected`, or a JSONL of `prompt`/`conversation`, two answers (`answer_a`
and `answer_b`, or `answers: [a, b]`) and a `label` naming the better (a/b, 0/1, first/second).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.prompts.sources import SHARED_DATA, hh_messages, jsonl_rows

DEFAULT_HH = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
FIRST, SECOND = {"a", "0", "first", "1st", "answer_a"}, {"b", "1", "second", "2nd", "answer_b"}


def _conversation(row: dict, where: str) -> list[dict]:
    if isinstance(row.get("conversation"), list):
        conv = row["conversation"]
        if not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in conv):
            raise InputError(f"{where}: conversation must be a list of {{role, content}} messages")
        return conv
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
    if not p.is_file():
        raise InputError(f"{p}: no such file (pass --data: HH-RLHF or a pairs JSONL)")
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, gzip.BadGzipFile) as err:
        raise InputError(f"{p}: cannot read it ({err})") from None
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
    from cai_ray.feedback import JudgeItem

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
            "position_bias": disagreements / n_orders if n_orders else None,
            "unparsed_verdicts": sum(getattr(j, "unparsed", 0) for j in jds),
            "mean_p_label": sum(p_truth) / len(p_truth),
            "ece": expected_calibration_error(dp, dt), "calibration": calibration(dp, dt)}


def reward_accuracy(model_path: str, pairs: list[dict]) -> dict:
    from cai_ray.algos.ratings import rate
    from cai_ray.train.reward import RewardScorer

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
    if not p.is_file():
        raise InputError(f"{p}: no such file (pass --data FILE, JSONL or CSV)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{p}: cannot read it as UTF-8 text ({err})") from None
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


def refusal_labels(args) -> dict:
    """Label every row of --data with the refusal detector; compare with --label-field if given."""
    from cai_ray import refusals as R
    from cai_ray.algos.ratings import rate

    rows = read_rows(args.data)
    if not rows:
        raise InputError(f"{args.data}: no rows")
    missing = [f for f in (args.answer_field,) if f not in rows[0][1]]
    if missing:
        raise InputError(f"{args.data}: line {rows[0][0]}: no field {missing[0]!r} (fields: "
                         f"{', '.join(rows[0][1])}); name the answer column with --answer-field")
    label_field = args.label_field
    out, preds, truths = [], [], []
    for line, row in rows:
        if args.answer_field not in row:
            raise InputError(f"{args.data}: line {line}: no field {args.answer_field!r}")
        answer = row[args.answer_field] or ""
        pred = R.is_refusal(answer)
        preds.append(pred)
        rec = {**row, "refusal_pred": pred, "refusal_pattern": R.matched(answer),
               "empty": R.is_empty(answer)}
        if label_field:
            if label_field not in row:
                raise InputError(f"{args.data}: line {line}: no field {label_field!r} "
                                 f"(--label-field)")
            truths.append(_flag(row[label_field], f"{args.data}: line {line}"))
        out.append(rec)
    res = {"data": str(args.data), "rows": len(out), "refusal": rate(preds),
           "empty": rate([r["empty"] for r in out]),
           "mean_answer_chars": sum(len(r[args.answer_field] or "") for r in out) / len(out)}
    if truths:
        res["against_labels"] = R.scores(preds, truths)
    from cai_ray.rundir import write_jsonl_atomic

    dest = Path(args.labels_out or Path(args.data).with_suffix(".refusals.jsonl"))
    write_jsonl_atomic(dest, out)
    res["labels_written"] = str(dest)
    return res


def _print_refusals(res: dict) -> None:
    r = res["refusal"]
    print(f"refusal rate {r['rate']:.3f} ({r['k']}/{r['n']}, 95% CI {r['low']:.3f}-"
          f"{r['high']:.3f}); empty answers {res['empty']['k']}; mean answer "
          f"{res['mean_answer_chars']:.0f} chars; labels in {res['labels_written']}")
    s = res.get("against_labels")
    if s:
        f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"against your labels: precision {f(s['precision'])} recall {f(s['recall'])} "
              f"false-positive rate {f(s['false_positive_rate'])} (n={s['n']})")


def main(target: str, argv: list[str]) -> int:
    if target == "refusals":
        return _refusals_main(argv)
    if target == "compare":
        from cai_ray import compare

        return compare.main(argv)
    ap = argparse.ArgumentParser(prog=f"cai-ray eval {target}")
    if target == "reward":
        ap.add_argument("model")
    else:
        ap.add_argument("--job", help="take the judge from this job file's `judge:` section")
        ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a job field, e.g. judge.kind=generative")
        ap.add_argument("--model", help="judge model (judge.model; default: the job's judge, "
                        "else its base model)")
        ap.add_argument("--actors", type=int, help="judge engine actors")
        ap.add_argument("--backend", choices=["vllm", "hf"], help="engine backend")
    ap.add_argument("--data", default=str(DEFAULT_HH))
    ap.add_argument("--n", type=int, default=64 if target == "judge" else 256)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    job = _judge_job(args) if target == "judge" else None
    pairs = labelled_pairs(args.data, args.n)
    if not pairs:
        raise InputError(f"{args.data}: no usable labelled pairs")
    if target == "reward":
        from cai_ray import models

        res = reward_accuracy(models.resolve(args.model), pairs)
        a = res["accuracy"]
        print(f"reward model {args.model}: pairwise accuracy {a['rate']:.3f} (95% CI "
              f"{a['low']:.3f}-{a['high']:.3f}) on {res['pairs']} pairs of {args.data}")
    else:
        res = _judge(job, pairs)
        a, f = res["accuracy"], lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"judge {res['judge']}: accuracy {f(a['rate'])} (95% CI {f(a['low'])}-"
              f"{f(a['high'])}) on the {a['n']} of {res['pairs']} pairs of {args.data} it "
              f"decided (ties {res['ties']}); ECE {f(res['ece'])}; position bias "
              f"{f(res['position_bias'])}; unparsed verdicts {res['unparsed_verdicts']}")
        for row in res["calibration"]:
            acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
            print(f"  confidence {row['bucket']}: n={row['n']:4d} accuracy={acc}")
    res["data"] = str(args.data)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _judge_job(args):
    """The job whose `judge:` section is measured (the packaged default job without --job)."""
    from cai_ray.config import load_job

    sets = list(args.set)
    if args.model:
        sets.append(f"judge.model={args.model}")
    if args.actors:
        sets.append(f"engine.num_actors={args.actors}")
    if args.backend:
        sets.append(f"engine.backend={args.backend}")
    return load_job(args.job, sets)


def judge_for(job, actors=None):
    """The job's judge as `cai-ray eval judge` builds it (judges.open_judge: the base model, or
    judge.model on actors(path), or the server of an http judge)."""
    from cai_ray import judges, models
    from cai_ray.constitution import load_constitution

    const = load_constitution(job.constitution.path)
    const.require("judge", job.constitution.path)
    judges.check(job.judge)
    return judges.open_judge(job.judge, const, default_model=models.resolve(job.model.name),
                             seed=job.seed, engine=job.engine, judge_engine=job.judge_engine(),
                             actors=actors)


def _judge(job, pairs: list[dict]) -> dict:
    from cai_ray import judges, models
    from cai_ray.stages.context import engine_pool_for, model_label

    base = models.resolve(job.model.name)
    actors = None
    if job.judge.kind != "http":
        from cai_ray.cluster import init_ray

        judges.check(job.judge)  # before Ray starts
        init_ray()
        actors = lambda path: engine_pool_for(job, path, name="judge",  # noqa: E731
                                              engine=job.judge_engine() if job.judge.model
                                              else job.engine)
    setup = judge_for(job, actors)
    try:
        return {"judge": judges.describe(job.judge, model_label(base)),
                "kind": job.judge.kind, **judge_quality(setup.judge, pairs)}
    finally:
        setup.close()


def _refusals_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray eval refusals", description="Label answers "
                                 "with the refusal detector (cai_ray/refusals.py).")
    ap.add_argument("--data", required=True, help="JSONL or CSV with an answer column")
    ap.add_argument("--answer-field", default="answer")
    ap.add_argument("--label-field", help="column with your refusal labels (true/false): adds "
                    "precision, recall and false-positive rate")
    ap.add_argument("--labels-out", help="where each row's label goes (default: next to --data, "
                    ".refusals.jsonl)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    res = refusal_labels(args)
    _print_refusals(res)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0
