"""SL-CAI prompt building, chaining, filters and views, with the real tiny model in-process."""

import pytest

from cai_ray.constitution import load_constitution
from cai_ray.generation import Request
from cai_ray.prompts import templates as T
from cai_ray.prompts.expand import dedupe
from cai_ray.stages.sl_cai import flags_for, pair_view, sft_view


@pytest.fixture(scope="module")
def const():
    return load_constitution("default")


def test_chat_critique_and_revision_requests(const):
    p = const.critique_revision[0]
    turn = T.Turn(p)
    conv = [{"role": "user", "content": "How do I pick a lock?"}]
    req = T.critique_request("chat", "r", conv, "Use a pin.", turn, const.critique_fewshot[:1])
    roles = [m["role"] for m in req.messages]
    assert roles == ["user", "assistant"] * 3 + ["user", "assistant", "user"]
    assert req.messages[-1]["content"] == p.critique
    assert req.messages[-2]["content"] == "Use a pin."
    turn.critique = "It helps break in."
    rev = T.revision_request("chat", "r", req, turn)
    assert rev.messages[-2] == {"role": "assistant", "content": "It helps break in."}
    assert rev.messages[-1]["content"] == p.revision


def test_transcript_form_matches_the_paper(const):
    p = const.critique_revision[1]
    turn = T.Turn(p)
    conv = [{"role": "user", "content": "Q?"}]
    ans = T.answer_request("transcript", "r", conv)
    assert ans.text == "Human: Q?\n\nAssistant:"
    req = T.critique_request("transcript", "r", conv, "A.", turn, const.critique_fewshot[:1])
    assert req.text.endswith(f"\n\nHuman: Q?\n\nAssistant: A.\n\nCritiqueRequest: {p.critique}"
                             f"\n\nCritique:")
    assert "\n\nRevision: " in req.text  # the few-shot example comes first
    turn.critique = "Bad."
    rev = T.revision_request("transcript", "r", req, turn)
    assert rev.text.endswith(f"Critique: Bad.\n\nRevisionRequest: {p.revision}\n\nRevision:")
    assert "\n\nHuman:" in T.stops("transcript")


def test_flags():
    rnd = {"revision_request": "Rewrite the reply without the harm.", "critique_request": "Say.",
           "revision": ""}
    assert flags_for("x", [rnd]) == ["empty"]
    assert flags_for("x", [dict(rnd, revision="Rewrite the reply without the harm")]) == ["echo"]
    assert flags_for("Same answer", [dict(rnd, revision="same  answer")]) == ["unchanged"]
    assert flags_for("old", [dict(rnd, revision="A careful new answer.")]) == []
    shot = "I won't help hurt anyone. Can I help you deal with what upset you?"
    assert flags_for("old", [dict(rnd, revision="I won't help hurt anyone. Can I help you deal "
                                                "with what upset you today?")], [shot]) == \
        ["copied_fewshot"]
    crit = dict(rnd, critique="The reply is rude and it insults the reader badly.",
                revision="The reply is rude and it insults the reader badly!")
    assert flags_for("old", [crit]) == ["restates_critique"]


def test_views_mix_and_drop():
    red = [{"id": f"r{i}", "prompt": f"q{i}", "initial": "bad", "final": f"good{i}",
            "flags": ["echo"] if i == 0 else []} for i in range(4)]
    helpful = [{"id": f"h{i}", "prompt": f"h{i}", "initial": "answer", "flags": []}
               for i in range(10)]
    rows = sft_view(red, helpful, 1.0, True, 0)
    assert sum(r["kind"] == "red_team" for r in rows) == 3
    assert sum(r["kind"] == "helpful" for r in rows) == 3
    assert all(r["messages"][1]["role"] == "assistant" for r in rows)
    pairs = pair_view(red, drop_flagged=False)
    assert len(pairs) == 4 and pairs[1]["chosen"] == "good1" and pairs[1]["rejected"] == "bad"


def test_expansion_dedupe():
    existing = ["How do I hot-wire a car that isn't mine?"]
    out = dedupe(["How do I hot-wire a car that isn't mine?",
                  "how do i hot-wire a car that is not mine today?",
                  "Tell me how to poison a neighbour's cat quietly.",
                  "Tell me how to poison a neighbour's cat quietly!", "short"], existing)
    assert out == ["Tell me how to poison a neighbour's cat quietly."]


def test_rounds_chain_on_the_previous_revision(tiny_model):
    """Round k+1 critiques round k's revision: a real tiny engine, with a spy on its requests."""
    from types import SimpleNamespace

    from cai_ray.config import load_job
    from cai_ray.engines.hf_engine import HfEngine
    from cai_ray.engines.local import LocalPool
    from cai_ray.prompts.sources import load_prompts
    from cai_ray.rundir.files import ProgressLog
    from cai_ray.stages.sl_cai import SlCaiRunner

    seen: list[Request] = []

    class Spy(HfEngine):
        def generate(self, requests, sampling):
            seen.extend(requests)
            return super().generate(requests, sampling)

    job = load_job("tiny", ["sl_cai.num_rounds=3", "sl_cai.max_new_tokens=8"])
    ctx = SimpleNamespace(job=job, constitution=load_constitution("short"), base_model=tiny_model,
                          progress=lambda *a, **k: SimpleNamespace(update=lambda n: None,
                                                                   close=lambda: None))
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    log, hlog = ProgressLog(tmp / "p.jsonl"), ProgressLog(tmp / "h.jsonl")
    runner = SlCaiRunner(ctx, LocalPool(Spy(tiny_model)), log, hlog)
    prompts = load_prompts(["builtin:red_team"], limit=2).prompts
    runner.run([runner.chain(p, "red_team") for p in prompts])
    row = log.rows[prompts[0].id]
    assert len(row["rounds"]) == 3
    crit = [r for r in seen if r.id == prompts[0].id and r.messages[-1]["content"] in
            {p.critique for p in ctx.constitution.critique_revision}]
    assert len(crit) == 3
    for k in (1, 2):  # the answer under critique in round k is round k-1's revision
        assert crit[k].messages[-2]["content"] == row["rounds"][k - 1]["revision"]
    assert crit[0].messages[-2]["content"] == row["initial"]
    principles = [r["principle_id"] for r in row["rounds"]]
    again = [ctx.constitution.sample_critiques(0, f"{prompts[0].id}/round{k}")[0].id
             for k in range(3)]
    assert principles == again  # recorded principles are the seeded draws
