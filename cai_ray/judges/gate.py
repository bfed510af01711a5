"""The judge checked before it labels anything (`judge.gate`): it is scored on labelled pairs
(`judge.check`: the pairs shipped in cai_ray/data/judge_check.jsonl, HH-RLHF, or a user's file),
the figures go to the manifest (`judge_checks`, cached per judge and data, so a resumed run does
not check again) and to the calling stage's result, and a judge whose accuracy is not above
chance stops the run with exit 2 (`fail`) or is reported (`warn`).

    record = gate(setup.judge, job.judge, ctx.run, judge_model=setup.model,
                  constitution=ctx.constitution, stage="preferences")   # None when gate: off
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.judges.quality import DEFAULT_HH, judge_quality, labelled_pairs

log = logging.getLogger("cai_ray")
BUILTIN = Path(__file__).resolve().parents[1] / "data" / "judge_check.jsonl"
MIN_PAIRS = 4


class JudgeAtChance(InputError):
    """judge.gate: fail, and the judge's accuracy is not above judge.check.min_accuracy."""


def data_path(check) -> Path:
    return {"builtin": BUILTIN, "hh-rlhf": DEFAULT_HH}.get(check.data, Path(check.data))


def load_pairs(check) -> list[dict]:
    """The labelled pairs of judge.check (InputError naming the file when it cannot serve)."""
    where = data_path(check)
    try:
        pairs = labelled_pairs(where, check.pairs)
    except InputError as exc:
        raise InputError(f"judge.check.data: {exc}") from None
    if len(pairs) < MIN_PAIRS:
        raise InputError(f"judge.check.data {where}: {len(pairs)} usable labelled pair(s); the "
                         f"check needs at least {MIN_PAIRS} (or set judge.gate: off)")
    return pairs


def check_config(cfg) -> None:
    """Load-time: the check's pairs can be read when the gate is on."""
    if cfg.gate != "off":
        load_pairs(cfg.check)


def cache_key(cfg, judge_model: str, constitution, pairs: list[dict]) -> str:
    """Everything the check's figures depend on: the judge's settings and model, the
    constitution, and the pairs."""
    blob = json.dumps({"judge": cfg.model_dump(mode="json", exclude={"gate", "check"}),
                       "model": str(judge_model), "constitution": constitution.model_dump(
                           mode="json"), "pairs": pairs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def passed(quality: dict, check) -> bool:
    """Above chance: the Wilson lower bound of the accuracy over every pair (a tie is wrong)
    above check.min_accuracy, and position bias (where both orders were asked) at most
    check.max_position_bias."""
    low, bias = quality["accuracy_all"]["low"], quality.get("position_bias")
    return (low is not None and low > check.min_accuracy
            and (bias is None or bias <= check.max_position_bias))


def describe(rec: dict) -> str:
    """One line: the figures and the verdict."""
    acc, bias, ece = rec["accuracy_all"], rec.get("position_bias"), rec.get("ece")
    figs = [f"accuracy {acc['rate']:.2f} [{acc['low']:.2f}, {acc['high']:.2f}] on {acc['n']} "
            f"pairs ({rec['data']})", f"ties {rec['ties']}"]
    if bias is not None:
        figs.append(f"position bias {bias:.2f}")
    if ece is not None:
        figs.append(f"ECE {ece:.2f}")
    why = []
    if acc["low"] is None or acc["low"] <= rec["min_accuracy"]:
        why.append(f"the interval's lower bound must exceed {rec['min_accuracy']:g}")
    if bias is not None and bias > rec.get("max_position_bias", 1.0):
        why.append(f"its verdicts follow the answers' order: position bias must be at most "
                   f"{rec['max_position_bias']:g}")
    verdict = "above chance" if rec["passed"] else f"not above chance ({'; '.join(why)})"
    return f"judge check of {rec['judge_model']}: {', '.join(figs)}: {verdict}"


FIXES = ("a larger judge model (--set judge.model=NAME), a served judge (--set judge.backend=http "
         "--set judge.url=URL), or --set judge.gate=warn to label with it anyway")


def gate(judge, cfg, run, *, judge_model: str, constitution, stage: str) -> dict | None:
    """Score the judge on judge.check's pairs (or take the manifest's record of the same check);
    raise JudgeAtChance under gate: fail when it is not above chance, warn under gate: warn.
    judge: a Judge, or a function that opens one (called only when the check runs)."""
    if cfg.gate == "off":
        return None
    pairs = load_pairs(cfg.check)
    key = cache_key(cfg, judge_model, constitution, pairs)
    rec = (run.manifest().get("judge_checks") or {}).get(key)
    if rec is not None and not {"passed", "accuracy_all", "ties", "data"} <= rec.keys():
        rec = None  # a record from elsewhere: check again
    if rec is not None:  # the figures stand; the thresholds are today's
        rec = {**rec, "cached": True, "min_accuracy": cfg.check.min_accuracy,
               "max_position_bias": cfg.check.max_position_bias,
               "passed": passed(rec, cfg.check)}
    else:
        t0 = time.time()
        quality = judge_quality(judge() if callable(judge) else judge, pairs)
        rec = {**quality, "data": cfg.check.data, "judge_model": Path(str(judge_model)).name,
               "judge_method": cfg.method, "min_accuracy": cfg.check.min_accuracy,
               "max_position_bias": cfg.check.max_position_bias,
               "passed": passed(quality, cfg.check), "stage": stage,
               "seconds": round(time.time() - t0, 2), "at": time.time()}
        run.note_entry("judge_checks", key, rec)
        rec = {**rec, "cached": False}
    rec = {**rec, "gate": cfg.gate, "key": key}
    if not rec["passed"]:
        if cfg.gate == "fail":
            raise JudgeAtChance(f"{stage}: {describe(rec)}; nothing was labelled. Fixes: {FIXES}")
        log.warning("%s: %s; its labels are at chance (judge.gate: warn)", stage, describe(rec))
    return rec
