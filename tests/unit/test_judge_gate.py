"""The judge's check before it labels anything (cai_ray/judges/gate.py), on real files: the pairs
shipped with the package, a real run directory's manifest, judges whose accuracy is known by
construction (plain classes with the Judge's label(items) -> Judgements; no model needed)."""

import json
import logging

import pytest

from cai_ray.config.judge import JudgeCfg
from cai_ray.constitution import load_constitution
from cai_ray.errors import InputError
from cai_ray.judges import Judgement
from cai_ray.judges.gate import BUILTIN, JudgeAtChance, cache_key, check_config, gate, load_pairs
from cai_ray.judges.quality import labelled_pairs
from cai_ray.rundir.layout import RunDir

GOOD_WORDS = ("can't", "won't", "cannot", "1,440", "Canberra", "86 degrees", "Muchas")


class Oracle:
    """Right by construction on the shipped pairs: it knows which answer was written as chosen."""

    def __init__(self, truth: dict[str, bool], p: float = 0.9):
        self.truth, self.p, self.calls = truth, p, 0

    def label(self, items):
        self.calls += 1
        return [Judgement(it.id, self.p if self.truth[it.id] else 1 - self.p, {"x": 0.9},
                          {"x": [0.9, 0.9]}) for it in items]


class FirstAlways:
    """Position bias itself: prefers whichever answer is shown first, in both orders."""

    calls = 0

    def label(self, items):
        self.calls += 1
        return [Judgement(it.id, 0.5, {"x": 0.5}, {"x": [0.9, 0.1]}, disagreements=1)
                for it in items]


@pytest.fixture
def run(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.open("id", "job", {})
    return rd


@pytest.fixture(scope="module")
def const():
    return load_constitution("short")


def truths():
    return {p["id"]: p["first_better"] for p in labelled_pairs(BUILTIN, 100)}


def test_the_shipped_pairs_cover_harm_and_help_and_show_chosen_first_on_about_half():
    pairs = labelled_pairs(BUILTIN, 100)
    assert len(pairs) == 40
    assert {p["id"].split("-")[0] for p in pairs} == {"harm", "help"}
    firsts = sum(p["first_better"] for p in pairs)
    assert 12 <= firsts <= 28, firsts  # an always-first judge cannot pass for accurate


def test_a_judge_right_by_construction_passes_and_is_recorded_once(run, const):
    cfg = JudgeCfg(gate="fail")
    oracle = Oracle(truths())
    rec = gate(oracle, cfg, run, judge_model="/m/judge", constitution=const, stage="preferences")
    assert rec["passed"] and not rec["cached"] and rec["accuracy_all"]["rate"] == 1.0
    assert rec["accuracy_all"]["low"] > 0.9 and rec["ties"] == 0
    stored = run.manifest()["judge_checks"][rec["key"]]
    assert stored["passed"] and stored["judge_model"] == "judge" and stored["data"] == "builtin"
    again = gate(oracle, cfg, run, judge_model="/m/judge", constitution=const, stage="preferences")
    assert again["cached"] and oracle.calls == 1  # a resumed run does not check again
    other = gate(oracle, cfg, run, judge_model="/m/other", constitution=const, stage="rl")
    assert not other["cached"] and oracle.calls == 2  # another judge model is checked anew


def test_a_judge_at_chance_fails_with_its_figures_and_the_fixes(run, const):
    with pytest.raises(JudgeAtChance) as err:
        gate(FirstAlways(), JudgeCfg(gate="fail"), run, judge_model="/m/tiny",
             constitution=const, stage="preferences")
    line = str(err.value)
    assert isinstance(err.value, InputError) and "\n" not in line
    for part in ("preferences: judge check of tiny", "accuracy 0.00", "on 40 pairs",
                 "ties 40", "position bias 1.00", "not above chance", "judge.model",
                 "judge.backend=http", "judge.gate=warn", "nothing was labelled"):
        assert part in line, (part, line)
    assert not next(iter(run.manifest()["judge_checks"].values()))["passed"]


def test_warn_goes_on_and_says_so_off_checks_nothing(run, const, caplog):
    wrong = Oracle({k: not v for k, v in truths().items()})
    with caplog.at_level(logging.WARNING, logger="cai_ray"):
        rec = gate(wrong, JudgeCfg(gate="warn"), run, judge_model="m", constitution=const,
                   stage="rl")
    assert not rec["passed"] and rec["accuracy_all"]["rate"] == 0.0 and rec["gate"] == "warn"
    assert "labels are at chance (judge.gate: warn)" in caplog.text
    assert gate(wrong, JudgeCfg(gate="off"), run, judge_model="x", constitution=const,
                stage="rl") is None
    assert len(run.manifest()["judge_checks"]) == 1


def test_a_judge_that_prefers_the_longer_answer_is_at_chance_on_the_shipped_pairs(run, const):
    """Half the shipped pairs have the shorter answer as the better one, in every prefix of 16."""
    class Longer:
        def label(self, items):
            return [Judgement(it.id, 0.9 if len(it.first) > len(it.second) else 0.1, {"x": 0.5},
                              {"x": [0.9, 0.9]}) for it in items]

    for n in (16, 40):
        rec = gate(Longer(), JudgeCfg(gate="warn", check={"pairs": n}), run, judge_model=f"m{n}",
                   constitution=const, stage="preferences")
        assert rec["accuracy_all"]["rate"] == 0.5 and not rec["passed"], rec["accuracy_all"]


def test_a_judge_whose_verdicts_follow_the_order_fails_however_lucky(run, const):
    class LuckyButPositional:
        def __init__(self, truth):
            self.truth = truth

        def label(self, items):  # right by a hair on every pair, its two orders always disagree
            return [Judgement(it.id, 0.52 if self.truth[it.id] else 0.48, {"x": 0.5},
                              {"x": [0.95, 0.09]}, disagreements=1) for it in items]

    with pytest.raises(JudgeAtChance, match="follow the answers' order: position bias must be "
                                            "at most 0.5"):
        gate(LuckyButPositional(truths()), JudgeCfg(gate="fail"), run, judge_model="m",
             constitution=const, stage="preferences")
    rec = gate(LuckyButPositional(truths()), JudgeCfg(gate="warn", check={
        "max_position_bias": 1.0}), run, judge_model="m", constitution=const, stage="preferences")
    assert rec["cached"] and rec["passed"]  # the same figures under today's thresholds


def test_a_judge_that_ties_everything_does_not_pass(run, const):
    class Ties:
        def label(self, items):
            return [Judgement(it.id, 0.5) for it in items]

    rec = gate(Ties(), JudgeCfg(gate="warn"), run, judge_model="m", constitution=const,
               stage="preferences")
    assert rec["ties"] == 40 and rec["accuracy_all"]["rate"] == 0.0 and not rec["passed"]


def test_the_key_changes_with_what_the_figures_depend_on(const):
    pairs = load_pairs(JudgeCfg().check)
    base = cache_key(JudgeCfg(), "m", const, pairs)
    assert cache_key(JudgeCfg(gate="warn"), "m", const, pairs) == base
    assert cache_key(JudgeCfg(principles_per_pair=3), "m", const, pairs) != base
    assert cache_key(JudgeCfg(), "m2", const, pairs) != base
    assert cache_key(JudgeCfg(), "m", const, pairs[:-1]) != base


def test_a_damaged_cached_record_is_checked_again(run, const):
    cfg, oracle = JudgeCfg(gate="fail"), Oracle(truths())
    key = cache_key(cfg, "m", const, load_pairs(cfg.check))
    run.note_entry("judge_checks", key, {"passed": True})  # no figures
    rec = gate(oracle, cfg, run, judge_model="m", constitution=const, stage="preferences")
    assert oracle.calls == 1 and not rec["cached"]


def test_check_data_is_read_at_load_time(tmp_path):
    with pytest.raises(InputError, match="judge.check.data: .*nope.jsonl: no such file"):
        check_config(JudgeCfg(check={"data": str(tmp_path / "nope.jsonl")}))
    few = tmp_path / "few.jsonl"
    few.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(InputError, match="1 usable labelled pair.*at least 4"):
        check_config(JudgeCfg(check={"data": str(few)}))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": 3, "rejected": "b"}\n')
    with pytest.raises(InputError, match="bad.jsonl: line 1"):
        check_config(JudgeCfg(check={"data": str(bad)}))
    check_config(JudgeCfg(gate="off", check={"data": str(tmp_path / "nope.jsonl")}))


def test_the_gate_and_its_data_do_not_rerun_a_stage():
    from cai_ray.config import load_job

    a = load_job("tiny", [])
    b = load_job("tiny", ["judge.gate=off", "judge.check.data=hh-rlhf"])
    assert a.digest("judge") == b.digest("judge")
    assert load_job("tiny", ["judge.num_fewshot=0"]).digest("judge") != a.digest("judge")
