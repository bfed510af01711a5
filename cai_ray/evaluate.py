"""Instruments that measure the AI-feedback parts against human labels (HH-RLHF harmless-base).

    cai-ray eval judge  [--model M] [--data FILE] [--n 64]   judge agreement + calibration
    cai-ray eval reward MODEL [--data FILE] [--n 256]        reward-model pairwise accuracy
    cai-ray eval refusals --data FILE [--answer-field F]     refusal rate, each row's label

Each HH-RLHF row has a `chosen` and a `rejected` transcript that share every turn but the last
assistant one; the human preferred `chosen`.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.prompts.sources import hh_messages

DEFAULT_HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / \
    "harmless-base-test.jsonl.gz"


def hh_pairs(path: str | Path, n: int) -> list[dict]:
    """Up to n rows of {id, conversation, chosen, rejected} with a shared conversation prefix."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: HH-RLHF file not found (pass --data)")
    raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    out = []
    for i, line in enumerate(raw.decode("utf-8").splitlines()):
        if len(out) >= n:
            break
        row = json.loads(line)
        c, r = hh_messages(row["chosen"]), hh_messages(row["rejected"])
        if not c or not r or c[:-1] != r[:-1] or c[-1]["role"] != "assistant":
            continue
        if c[-1]["content"].strip() == r[-1]["content"].strip():
            continue
        out.append({"id": f"hh-{i}", "conversation": c[:-1], "chosen": c[-1]["content"],
                    "rejected": r[-1]["content"]})
    return out


def judge_agreement(judge, pairs: list[dict]) -> dict:
    from cai_ray.algos.labels import calibration
    from cai_ray.feedback import JudgeItem

    items = [JudgeItem(p["id"], p["conversation"], p["chosen"], p["rejected"]) for p in pairs]
    jds = judge.label(items)
    preds = [j.p_first for j in jds]
    agree = sum(p > 0.5 for p in preds) / len(preds)
    disagreements = sum(j.disagreements for j in jds)
    n_orders = sum(len(j.per_principle) for j in jds)
    return {"pairs": len(pairs), "agreement": agree,
            "order_disagreement": disagreements / n_orders if n_orders else None,
            "mean_p_human_choice": sum(preds) / len(preds),
            "calibration": calibration(preds, [True] * len(preds))}


def reward_accuracy(model_path: str, pairs: list[dict]) -> dict:
    from cai_ray.train.reward import RewardScorer

    scorer = RewardScorer(model_path)
    good = scorer.score([p["conversation"] + [{"role": "assistant", "content": p["chosen"]}]
                         for p in pairs])
    bad = scorer.score([p["conversation"] + [{"role": "assistant", "content": p["rejected"]}]
                        for p in pairs])
    acc = sum(g > b for g, b in zip(good, bad)) / len(pairs)
    return {"pairs": len(pairs), "accuracy": acc,
            "mean_margin": sum(g - b for g, b in zip(good, bad)) / len(pairs)}


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
    rows = []
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{p}:{k}: not JSON ({err.msg}); give one JSON object per line, "
                             f"or a .csv file") from None
        if not isinstance(row, dict):
            raise InputError(f"{p}:{k}: a JSON object with named fields is needed")
        rows.append((k, row))
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
        raise InputError(f"{args.data}:{rows[0][0]}: no field {missing[0]!r} (fields: "
                         f"{', '.join(rows[0][1])}); name the answer column with --answer-field")
    label_field = args.label_field
    out, preds, truths = [], [], []
    for line, row in rows:
        if args.answer_field not in row:
            raise InputError(f"{args.data}:{line}: no field {args.answer_field!r}")
        answer = row[args.answer_field] or ""
        pred = R.is_refusal(answer)
        preds.append(pred)
        rec = {**row, "refusal_pred": pred, "refusal_pattern": R.matched(answer),
               "empty": R.is_empty(answer)}
        if label_field:
            if label_field not in row:
                raise InputError(f"{args.data}:{line}: no field {label_field!r} (--label-field)")
            truths.append(_flag(row[label_field], f"{args.data}:{line}"))
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
    from cai_ray import models

    if target == "refusals":
        ap = argparse.ArgumentParser(prog="cai-ray eval refusals", description="Label answers "
                                     "with the refusal detector (cai_ray/refusals.py).")
        ap.add_argument("--data", required=True, help="JSONL or CSV with an answer column")
        ap.add_argument("--answer-field", default="answer")
        ap.add_argument("--label-field", help="column with your refusal labels (true/false): "
                        "adds precision, recall and false-positive rate")
        ap.add_argument("--labels-out", help="where each row's label goes (default: next to "
                        "--data, .refusals.jsonl)")
        ap.add_argument("--out", help="write the figures as JSON here")
        args = ap.parse_args(argv)
        res = refusal_labels(args)
        _print_refusals(res)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        return 0

    ap = argparse.ArgumentParser(prog=f"cai-ray eval {target}")
    if target == "reward":
        ap.add_argument("model")
    else:
        ap.add_argument("--model", default="smollm2-135m-instruct")
        ap.add_argument("--constitution", default="default")
        ap.add_argument("--principles", type=int, default=2)
        ap.add_argument("--actors", type=int, default=1)
        ap.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--data", default=str(DEFAULT_HH))
    ap.add_argument("--n", type=int, default=64 if target == "judge" else 256)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args(argv)
    pairs = hh_pairs(args.data, args.n)
    if not pairs:
        raise InputError(f"{args.data}: no usable chosen/rejected pairs")
    if target == "reward":
        res = reward_accuracy(models.resolve(args.model), pairs)
        print(f"reward model {args.model}: HH-RLHF harmless-base pairwise accuracy "
              f"{res['accuracy']:.3f} on {res['pairs']} pairs")
    else:
        res = _judge(args, pairs)
        print(f"judge {args.model}: agrees with the human label on {res['agreement']:.3f} of "
              f"{res['pairs']} HH-RLHF harmless-base pairs (order disagreement "
              f"{res['order_disagreement']:.3f})")
        for row in res["calibration"]:
            acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
            print(f"  confidence {row['bucket']}: n={row['n']:4d} accuracy={acc}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def _judge(args, pairs: list[dict]) -> dict:
    from transformers import AutoTokenizer

    from cai_ray import models
    from cai_ray.constitution import load_constitution
    from cai_ray.feedback import Judge

    path = models.resolve(args.model)
    const = load_constitution(args.constitution)
    if args.backend == "hf":
        from cai_ray.engines.hf_engine import HfEngine
        from cai_ray.engines.local import LocalPool

        pool = LocalPool(HfEngine(path))
    else:
        from cai_ray.cluster import init_ray
        from cai_ray.engines.pool import EnginePool

        init_ray()
        pool = EnginePool(args.actors, "vllm", path, engine_kwargs={"dtype": "auto"})
    try:
        judge = Judge(pool, AutoTokenizer.from_pretrained(path), const,
                      principles_per_pair=args.principles)
        return {"model": args.model, **judge_agreement(judge, pairs)}
    finally:
        pool.shutdown()
