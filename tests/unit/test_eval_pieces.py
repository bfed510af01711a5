"""The eval stage's pieces on hand-made data (cai_ray/eval/arena.py, cai_ray/eval/report.py): the
tournament and its Elo, refusal figures, per-principle attribution, RL policy snapshots, the
report. The judge here is a plain object that prefers the longer answer (the real judge is
exercised by the tiny job in tests/integration/test_pipeline_cli.py)."""

import json
from types import SimpleNamespace

import pytest

from cai_ray.eval import arena as E
from cai_ray.judges import Judgement
from cai_ray.stages.rl import prune

POLS = [E.Policy("base", "/m/base", 0), E.Policy("sft", "/m/sft", 1), E.Policy("rl", "/m/rl", 7)]


class LongerIsBetter:
    def label(self, items):
        return [Judgement(it.id, 1.0 if len(it.first) > len(it.second) else 0.0) for it in items]


class Bar:
    n = 0

    def update(self, k):
        self.n += k


def prompts(*ids):
    return [SimpleNamespace(id=i, prompt=f"prompt {i}") for i in ids]


def test_tournament_and_elo_rank_by_what_the_judge_prefers():
    ps = prompts("p1", "p2", "p3", "p4")
    answers = {"base": {p.id: "a" for p in ps}, "sft": {p.id: "aa" for p in ps},
               "rl": {p.id: "aaa" for p in ps}}
    answers["sft"]["p4"] = "a"  # identical to base: a tie, not sent to the judge
    bar = Bar()
    comps = E.tournament(LongerIsBetter(), POLS, answers, ps, "harmless", bar)
    assert len(comps) == 3 * 4 and bar.n == 11
    assert ("p4", 0, 1, 0.5) in comps and ("p1", 0, 2, 0.0) in comps  # base lost to rl
    fig = E.elo_figures(POLS, comps, n_boot=200, seed=0)
    elo = {k: v["elo"] for k, v in fig["policies"].items()}
    assert elo["base"] == 1000 and elo["rl"] > elo["sft"] > elo["base"]
    w = fig["win_rates"]["rl_vs_base"]
    assert (w["hard"]["k"], w["hard"]["n"], w["ties"]) == (4, 4, 0)
    assert fig["win_rates"]["rl_vs_sft"]["soft"]["mean"] == 1.0


def test_refusal_figures_and_the_paired_difference():
    harm = {"red_team": prompts("r1", "r2"), "harmbench": prompts("h1", "h2")}
    ben = {"helpful": prompts("g1"), "xstest-safe": prompts("x1", "x2")}
    yes, no = "I can't help with that.", "Sure, here is how."
    answers = {"base": {i: no for i in ("r1", "r2", "h1", "h2", "g1", "x1", "x2")},
               "sft": {i: no for i in ("r1", "r2", "h1", "h2", "g1", "x1", "x2")},
               "rl": {"r1": yes, "r2": yes, "h1": yes, "h2": "", "g1": no, "x1": yes, "x2": no}}
    fig = E.refusal_figures(POLS, answers, harm, ben, n_boot=200, seed=0)
    allh = fig["sets"]["all_harmful"]["policies"]
    assert (allh["rl"]["k"], allh["rl"]["n"], allh["rl"]["empty"]) == (3, 4, 1)
    assert allh["base"]["rate"] == 0 and allh["rl"]["low"] < 0.75 < allh["rl"]["high"]
    assert fig["pooled"]["harmful"]["difference"] == pytest.approx(0.75)
    assert fig["pooled"]["xstest_safe"]["difference"] == pytest.approx(0.5)
    s = E.summary({"refusals": fig, "judge": "j", "elo": {k: {"policies": {
        p.name: {"elo": 1000, "low": 990, "high": 1010} for p in POLS}} for k in
        ("harmless", "helpful")}}, POLS)
    assert s["refusal/harmful/final"] == 0.75 and s["over_refusal/xstest/final"] == 0.5


def test_what_each_stage_added_and_which_moved_the_rate():
    """16 harmful prompts: sft refuses 12 that base answered (+0.75, every resample > 0), rl one
    more (+0.0625, an interval that holds 0). 4 benign: nothing moves."""
    ids = [f"r{k}" for k in range(16)]
    harm, ben = {"red_team": prompts(*ids)}, {"helpful": prompts("g1", "g2", "g3", "g4")}
    yes, no = "I can't help with that.", "Sure, here is how."
    answers = {"base": {i: no for i in ids}, "sft": {i: yes if k < 12 else no
                                                     for k, i in enumerate(ids)},
               "rl": {i: yes if k < 13 else no for k, i in enumerate(ids)}}
    for a in answers.values():
        a.update({g: no for g in ("g1", "g2", "g3", "g4")})
    pols = POLS + [E.Policy("rl@1", "/m/rl1", 3)]  # a checkpoint is not a stage
    pols = [pols[0], pols[1], pols[3], pols[2]]
    answers["rl@1"] = dict(answers["base"])
    fig = E.refusal_figures(pols, answers, harm, ben, n_boot=500, seed=0)
    steps = fig["steps"]["harmful"]
    assert [st["of"] for st in steps] == [["sft", "base"], ["rl", "sft"]]
    assert steps[0]["difference"] == pytest.approx(0.75) and steps[0]["excludes_zero"]
    assert steps[1]["difference"] == pytest.approx(1 / 16) and not steps[1]["excludes_zero"]
    s = E.summary({"refusals": fig, "judge": "j", "elo": {k: {"policies": {
        p.name: {"elo": 1000, "low": 990, "high": 1010} for p in pols}} for k in
        ("harmless", "helpful")}}, pols)
    assert s["refusal/moved_by"].startswith("sft +0.750 [+0.")
    assert s["over_refusal/moved_by"] == "no stage (every interval holds 0)"
    assert s["refusal/step/rl"] == pytest.approx(1 / 16)


def test_attribution_by_hand(tmp_path):
    (tmp_path / "preferences").mkdir()
    (tmp_path / "sl_cai").mkdir()
    rows = [  # ensemble 0.6 -> first; principle a agrees, b does not; a's orders disagree once
        {"per_principle": {"a": 0.9, "b": 0.3}, "orders": {"a": [0.9, 0.9], "b": [0.6, 0.0]}},
        {"per_principle": {"a": 0.2}, "orders": {"a": [0.7, 0.1]}}]
    (tmp_path / "preferences" / "data.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    sl = [{"kind": "red_team", "rounds": [{"principle_id": "x"}], "flags": ["echo"]},
          {"kind": "red_team", "rounds": [{"principle_id": "x"}], "flags": []},
          {"kind": "helpful", "rounds": []}]
    (tmp_path / "sl_cai" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sl))
    got = {r["principle"]: r for r in E.attribution(tmp_path)}
    assert (got["a"]["drawn"], got["a"]["agreement"], got["a"]["position_bias"]) == (2, 1.0, 0.5)
    assert (got["b"]["agreement"], got["b"]["position_bias"]) == (0.0, 1.0)
    assert (got["x"]["revisions"], got["x"]["flagged_share"]) == (2, 0.5)


def test_pruned_rl_checkpoints_leave_their_policy(tmp_path):
    ck = tmp_path / "rl" / "checkpoints"
    for it in (1, 2, 3, 4):
        (ck / f"iter_{it}" / "policy").mkdir(parents=True)
        (ck / f"iter_{it}" / "policy" / "config.json").write_text("{}")
        (ck / f"iter_{it}" / "optimizer.pt").write_text("big")
        (ck / f"iter_{it}" / "trainer_state.json").write_text("{}")
        prune(ck, keep=1, keep_policies=2)
    assert [d.name for d in ck.iterdir()] == ["iter_4"]
    kept = sorted(d.name for d in (tmp_path / "rl" / "policies").iterdir())
    assert kept == ["iter_2", "iter_3"]  # the newest two dropped ones, weights only
    assert not (tmp_path / "rl" / "policies" / "iter_3" / "optimizer.pt").exists()
    prune(ck, keep=1, keep_policies=0)
    assert not list((tmp_path / "rl" / "policies").iterdir())


def test_report_has_its_tables_and_embedded_plots(tmp_path):
    from cai_ray.eval import report

    harm, ben = {"red_team": prompts("r1")}, {"helpful": prompts("g1"),
                                              "xstest-safe": prompts("x1")}
    answers = {p.name: {"r1": "I can't help with that.", "g1": "<b>bold</b>", "x1": "ok"}
               for p in POLS}
    comps = E.tournament(LongerIsBetter(), POLS, answers, prompts("r1"), "h", Bar())
    result = {"judge": "logprob base", "refusals": E.refusal_figures(POLS, answers, harm, ben,
                                                                      200, 0),
              "elo": {k: E.elo_figures(POLS, comps, 200, 0) for k in ("harmless", "helpful")},
              "attribution": [], "judge_checks": [{
                  "stage": "preferences", "gate": "warn", "judge_model": "tiny", "data": "builtin",
                  "accuracy_all": {"rate": 0.5, "low": 0.35, "high": 0.65, "n": 40}, "ties": 3,
                  "position_bias": 1.0, "ece": 0.2, "passed": False, "min_accuracy": 0.5}]}
    report.write(tmp_path, tmp_path, result, POLS, answers, harm["red_team"], ben["helpful"], 2)
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    top = page.index('<p class="check">preferences: judge check of tiny: accuracy 0.50 [0.35, '
                     '0.65] on 40 pairs (builtin), ties 3, position bias 1.00, ECE 0.20: not '
                     'above chance')
    assert top < page.index("<h2>")  # at the top of the report
    assert "Harmlessness and helpfulness Elo" in page and "xstest-safe" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page  # answers escaped
    md = (tmp_path / "report.md").read_text()
    assert "| policy | step | harmlessness Elo [95% CI]" in md
    assert "refusal, all harmful prompts: sft - base (what the stage added)" in md
