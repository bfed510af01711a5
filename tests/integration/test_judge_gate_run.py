"""The judge is checked before it labels anything (judge.gate), through the pipeline on the tiny
model (real Ray, HF engine actors): the tiny random model's own judge stops the run with exit 2
before the preferences stage writes a file; a judge that is right by construction (a plugin
method that prefers the refusing answer, on pairs built that way) passes and labels."""

import json
from pathlib import Path

import pytest

from cai_ray.judges.gate import BUILTIN

pytestmark = pytest.mark.integration
PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "gate_judge.py"


@pytest.fixture
def restore_methods():
    from cai_ray import judges
    from cai_ray.config import plugins

    saved = dict(judges.METHODS), dict(plugins._loaded)
    yield
    for d, before in zip((judges.METHODS, plugins._loaded), saved):
        d.clear()
        d.update(before)


def test_a_judge_at_chance_stops_the_run_before_preferences_writes(ray_cluster, tmp_path,
                                                                     capsys):
    from cai_ray.cli import main

    run = tmp_path / "run"
    rc = main(["run", "tiny", "--stages", "preferences", "--run-dir", str(run), "--quiet",
               "--set", "start_policy=base", "--set", "judge.gate=fail",
               "--set", "engine.backend=hf"])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = [x for x in err.splitlines() if x.startswith("cai-ray: error:")]
    assert len(line) == 1, err
    for part in ("preferences: judge check of tiny-random-llama", "accuracy ", "on 16 pairs",
                 "position bias", "ECE", "not above chance", "judge.model", "judge.gate=warn"):
        assert part in line[0], (part, line[0])
    assert not (run / "preferences").exists()  # nothing sampled, nothing labelled
    m = json.loads((run / "manifest.json").read_text())
    assert m["stages"]["preferences"]["status"] == "failed"
    (check,) = m["judge_checks"].values()
    assert check["passed"] is False and check["pairs"] == 16 and check["stage"] == "preferences"


def test_a_judge_right_by_construction_passes_and_labels(ray_cluster, tmp_path,
                                                         restore_methods):
    from cai_ray import pipeline
    from cai_ray.config import load_job

    pairs = tmp_path / "refusals.jsonl"  # the shipped harm pairs: the chosen answer refuses
    pairs.write_text("".join(x for x in BUILTIN.read_text().splitlines(keepends=True)
                             if '"harm-' in x))
    job = load_job("tiny", [f"plugins=[{PLUGIN}]", "start_policy=base", "engine.backend=hf",
                            "judge.method=refusal_first", "judge.gate=fail",
                            f"judge.check.data={pairs}", "judge.check.pairs=24"],
                   stages="preferences", run_dir=str(tmp_path / "run"))
    summary = pipeline.run(job, quiet=True)
    res = summary["preferences"]["result"]
    check = res["judge_check"]
    assert check["passed"] and check["accuracy_all"]["rate"] == 1.0 and check["pairs"] == 24
    assert check["accuracy_all"]["low"] > 0.5 and check["judge_method"] == "refusal_first"
    assert res["pairs"] > 0  # it went on to label
    top = pipeline.format_summary(summary).splitlines()[0]  # the summary opens with it
    assert top.startswith("preferences: judge check of tiny-random-llama") and \
        ": accuracy 1.00 [0.86, 1.00] on 24 pairs" in top and top.endswith("above chance"), top
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [c["passed"] for c in m["judge_checks"].values()] == [True]
