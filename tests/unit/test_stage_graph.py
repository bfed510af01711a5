"""The stage graph: who provides each stage's inputs, load-time refusal of a missing input, and
digests that follow the data (cai_ray/stages/graph.py)."""

import pytest

from cai_ray.config import load_job
from cai_ray.errors import InputError
from cai_ray.stages import graph


def plan(stages, *over, recorded=None):
    job = load_job("tiny", list(over), stages=stages)
    return job, graph.resolve(job, recorded or {})


def test_default_pipeline_inputs():
    _, p = plan("sl_cai,sft,preferences,reward,rl,eval")
    assert p.inputs["sft"] == {"sft_data": "sl_cai"}
    assert p.inputs["preferences"] == {"policy": "sft"}
    assert p.inputs["rl"] == {"policy": "sft", "reward_model": "reward"}
    assert p.inputs["eval"] == {"policy": "rl"}
    assert not p.missing


def test_the_newest_policy_is_the_current_one():
    _, p = plan("sl_cai,sft,preferences,dpo,rl,eval", "rl.reward=short")
    assert p.inputs["dpo"] == {"policy": "sft", "preferences": "preferences"}
    assert p.inputs["rl"] == {"policy": "dpo"}  # RL starts from DPO's model
    assert p.inputs["eval"] == {"policy": "rl"}
    _, p = plan("sl_cai,sft,dpo", "dpo.data=sl_cai_pairs")
    assert p.inputs["dpo"] == {"policy": "sft", "pairs": "sl_cai"}


def test_a_missing_input_is_refused_with_its_maker():
    job, p = plan("dpo", "start_policy=base")
    assert p.missing == {"dpo": ["preferences"]}
    with pytest.raises(InputError, match="dpo reads preferences, which preferences makes"):
        graph.check(job, p, "runs/x")
    job, p = plan("eval")
    with pytest.raises(InputError, match="eval reads policy, which sft / dpo / rl makes.*"
                                         "start_policy"):
        graph.check(job, p, "runs/x")


def test_a_complete_stage_provides_only_under_its_current_digest():
    _, first = plan("sl_cai,sft")
    done = {s: {"status": "complete", "digest": first.digests[s]} for s in ("sl_cai", "sft")}
    job, p = plan("preferences", recorded=done)
    assert p.inputs["preferences"] == {"policy": "sft"} and not p.missing
    job, p = plan("preferences", "sft.lr=0.5", recorded=done)  # sft's config changed: stale
    assert p.missing == {"preferences": ["policy"]}
    job, p = plan("preferences", "sl_cai.max_new_tokens=9", recorded=done)  # upstream of sft
    assert p.missing == {"preferences": ["policy"]}


def test_digests_follow_what_a_stage_reads():
    _, a = plan("sl_cai,sft,preferences,dpo,eval")
    _, b = plan("sl_cai,sft,preferences,dpo,eval", "reward.lr=0.5")  # reward is not upstream
    _, c = plan("sl_cai,sft,preferences,dpo,eval", "dpo.beta=0.5")
    assert a.digests["eval"] == b.digests["eval"]
    assert a.digests["eval"] != c.digests["eval"] and a.digests["sft"] == c.digests["sft"]


def test_start_policy_is_used_only_when_nothing_makes_a_policy():
    _, p = plan("sl_cai,sft,preferences", "start_policy=base")
    assert p.inputs["preferences"] == {"policy": "sft"}
    _, p = plan("preferences", "start_policy=base")
    assert p.inputs["preferences"] == {"policy": graph.START}


def test_a_stage_model_is_an_absolute_path_with_a_relative_run_dir(tmp_path, monkeypatch):
    """Ray Train workers and actors run in folders of their own: a model an earlier stage wrote
    under a relative --run-dir must reach them as an absolute path (the dpo job once failed so)."""
    from types import SimpleNamespace

    from cai_ray.rundir.layout import RunDir
    from cai_ray.stages.context import Context

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x" / "sft" / "model").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "sft" / "model" / "config.json").write_text("{}")
    got = Context.stage_model(SimpleNamespace(run=RunDir("runs/x")), "sft")
    assert got == str(tmp_path / "runs" / "x" / "sft" / "model")


def test_the_stage_order_comes_from_the_declarations(monkeypatch):
    """Stages take their place from Stage.after, whatever order they register in; a plugin's
    stage goes where it says (after eval here), and the graph plans it like any other."""
    from cai_ray.stages import registry
    from cai_ray.stages.base import Stage

    builtin = list(registry.STAGES.values())
    assert [s.name for s in builtin] == ["sl_cai", "sft", "preferences", "reward", "dpo", "rl",
                                         "eval"]
    monkeypatch.setattr(registry, "STAGES", {})
    monkeypatch.setattr(registry, "_declared", {})
    note = Stage(name="note", about="", run=lambda ctx: {}, reads=lambda job: ("policy",),
                 after="eval")
    also = Stage(name="also", about="", run=lambda ctx: {}, after="eval")
    for st in [note, also, *reversed(builtin)]:  # the plugins first, the built-ins backwards
        registry.register_stage(st)
    # two stages after the same one keep the order they registered in
    assert list(registry.STAGES) == [s.name for s in builtin] + ["note", "also"]
    monkeypatch.setattr(graph, "STAGES", registry.STAGES)
    job = load_job("tiny", stages="sl_cai,sft,note")
    assert graph.resolve(job, {}).inputs["note"] == {"policy": "sft"}
