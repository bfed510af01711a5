"""The extension points from outside cai_ray (tests/plugins/cai_ext.py): a stage, a judge method,
a reward source, an advantage estimator and a policy loss, each registered by a plugin the job
names, run through the pipeline (preferences, rl, the plugin's stage) on the tiny model with no
file of cai_ray changed. One run, one test per extension."""

import json
import sys
from pathlib import Path

import pytest

from cai_ray.rundir.files import read_jsonl

pytestmark = pytest.mark.integration
PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "cai_ext.py"


@pytest.fixture(scope="module")
def registries():
    """Every registry as it was before the plugin, put back after this module (the plugin's
    names would otherwise stay registered in this test process)."""
    from cai_ray import judges, rewards
    from cai_ray.algos import advantages, policy_loss
    from cai_ray.config import plugins, sections
    from cai_ray.rewards import registry
    from cai_ray.stages import graph
    from cai_ray.stages import registry as stages

    saved = [(d, dict(d)) for d in (judges.METHODS, registry.REWARDS, advantages.ESTIMATORS,
                                    policy_loss.POLICY_LOSSES, sections.EXTRA_SECTIONS,
                                    stages.STAGES, stages._declared, plugins._loaded)]
    assert graph.STAGES is stages.STAGES and rewards.REWARDS is registry.REWARDS
    yield
    for d, before in saved:
        d.clear()
        d.update(before)


@pytest.fixture(scope="module")
def run(ray_cluster, registries, tmp_path_factory):
    from cai_ray import pipeline
    from cai_ray.config import load_job

    root = tmp_path_factory.mktemp("ext")
    scores = root / "scores.jsonl"
    job = load_job("tiny", [f"plugins=[{PLUGIN}]", "start_policy=base", "judge.method=longer",
                            f"rl.reward=vowels:{scores}", "rl.advantage=centered",
                            "rl.policy_loss=plain_pg", "notes.greeting=hello from a plugin",
                            "engine.backend=hf"],
                   stages="preferences,rl,notes", run_dir=str(root / "run"))
    summary = pipeline.run(job, quiet=True)
    plugin = sys.modules["cai_ray_plugin_cai_ext"]
    return root / "run", summary, read_jsonl(scores), plugin


def test_a_plugin_stage_runs_in_the_order_data_flows(run):
    path, summary, _, _ = run
    assert list(summary) == ["preferences", "rl", "notes"]
    assert all(s["status"] == "complete" for s in summary.values()), summary
    notes = json.loads((path / "notes" / "result.json").read_text())
    assert notes["greeting"] == "hello from a plugin"  # its own job-file section
    assert notes["policy"] == str((path / "rl" / "model").resolve())  # the graph gave it rl's


def test_a_plugin_judge_method_labels_the_preferences(run):
    rows = read_jsonl(run[0] / "preferences" / "data.jsonl")
    rows = [r for r in rows if "chosen" in r]
    assert rows
    for r in rows:  # the plugin's rule, exactly: the longer answer, by its share of characters
        want = len(r["chosen"]) / (len(r["chosen"]) + len(r["rejected"]))
        assert r["p_chosen"] == pytest.approx(want) and len(r["chosen"]) >= len(r["rejected"])


def test_a_plugin_reward_source_scores_the_rollouts(run):
    path, _, scores, _ = run
    assert len(scores) == 2 * 4 * 2  # iterations x prompts x samples
    for s in scores:
        text = s["response"]
        assert s["reward"] == pytest.approx(sum(c in "aeiouAEIOU" for c in text) /
                                            max(1, len(text)))
    metrics = read_jsonl(path / "rl" / "metrics.jsonl")
    first = [s["reward"] for s in scores[:8]]
    assert metrics[0]["reward/mean"] == pytest.approx(sum(first) / len(first), abs=1e-5)


def test_a_plugin_advantage_estimator_gives_the_advantages(run):
    _, _, scores, plugin = run
    calls = plugin.ESTIMATOR_CALLS
    assert len(calls) == 2  # once per iteration, in the driver
    for k, got in enumerate(calls):
        want = [s["reward"] for s in scores[8 * k:8 * (k + 1)]]
        assert sorted(got) == pytest.approx(sorted(want), abs=1e-6)


def test_a_plugin_policy_loss_trains_the_learner(run):
    metrics = read_jsonl(run[0] / "rl" / "metrics.jsonl")
    assert len(metrics) == 2
    for m in metrics:  # the learner ran the plugin's loss, not the clipped surrogate
        assert m["plain_pg/used"] == 1.0 and "policy/clipfrac" not in m



def test_a_failing_stage_reaches_the_console_with_the_path_of_the_full_logs(run, tmp_path,
                                                                              capsys):
    """The quiet console hides the libraries' logs, not a failure: the stage's traceback and
    where RUN_DIR/logs/ is (the plugin's stage raises when its greeting says so)."""
    from cai_ray import pipeline
    from cai_ray.config import load_job

    job = load_job("tiny", [f"plugins=[{PLUGIN}]", "start_policy=base",
                            "notes.greeting=raise"], stages="notes", run_dir=str(tmp_path / "r"))
    summary = pipeline.run(job, quiet=True)
    err = capsys.readouterr().err
    assert summary["notes"]["status"] == "failed", summary
    assert "RuntimeError: the notes stage was asked to fail" in err, err[-3000:]
    assert f"cai-ray: stage notes failed; the full logs: {tmp_path / 'r' / 'logs'}" in err
    assert (tmp_path / "r" / "logs" / "driver.log").is_file()
