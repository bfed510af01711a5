import json

import pytest

from cai_ray.constitution import load_constitution, parse_transcript
from cai_ray.errors import InputError

HARMS = ["illegal", "danger", "unethical", "toxic", "racis", "sexis", "bias", "manipulat",
         "honest", "helpful"]


def test_default_constitution_is_full():
    c = load_constitution("default")
    assert len(c.critique_revision) >= 16 and len(c.judge) >= 16
    text = " ".join(p.critique + p.revision for p in c.critique_revision).lower()
    judge = " ".join(j.text for j in c.judge).lower()
    for harm in HARMS:
        assert harm in text, harm
        assert harm in judge or harm[:5] in judge, harm
    assert c.critique_fewshot and c.judge_fewshot


def test_short_constitution():
    c = load_constitution("short")
    assert len(c.critique_revision) == 2 and len(c.judge) == 2


def test_cai_paper_folder(shared_data):
    c = load_constitution(shared_data / "cai-paper")
    assert len(c.critique_revision) == 16 and len(c.judge) == 16
    assert c.critique_revision[0].critique.startswith("Identify specific ways")
    assert not c.critique_revision[0].revision.endswith("Revision:")
    assert len(c.critique_fewshot) >= 4
    first = c.critique_fewshot[0]
    assert first.messages[0].role == "user" and "burn" in first.messages[0].content
    assert first.messages[-1].role == "assistant"
    assert len(c.judge_fewshot) >= 3


@pytest.mark.parametrize("name, pairs", [("constitution_anthropic.json", 16),
                                         ("constitution_grok.json", 2)])
def test_hf_recipe_json(shared_data, name, pairs):
    c = load_constitution(shared_data / "llm-swarm" / name)
    assert len(c.critique_revision) == pairs
    assert c.critique_fewshot and c.critique_fewshot[0].critique_request
    with pytest.raises(InputError, match="judge"):
        c.require("judge")


def test_sampling_is_seeded_and_order_free():
    c = load_constitution("default")
    a = [c.sample_critiques(0, f"p{i}/round0")[0].id for i in range(50)]
    b = [c.sample_critiques(0, f"p{i}/round0")[0].id for i in reversed(range(50))][::-1]
    assert a == b
    assert len(set(a)) > 5  # actually random across keys
    other = [c.sample_critiques(1, f"p{i}/round0")[0].id for i in range(50)]
    assert other != a
    judges = c.sample_judges(0, "pair", 4)
    assert len({j.id for j in judges}) == 4


def test_parse_transcript():
    turns = parse_transcript("\n\nHuman: hi\n\nAssistant: hello\n\nCritiqueRequest: x"
                             "\n\nCritique: y")
    assert turns == [("Human", "hi"), ("Assistant", "hello"), ("CritiqueRequest", "x"),
                     ("Critique", "y")]


@pytest.mark.parametrize("text, where", [
    ("name: x\n", "no principles"),
    ("critique_revision: []\njudge: []\n", "no principles"),
    ("critique_revision:\n  - id: a\n    critique: c\n", "critique_revision.0.revision"),
    ("critique_revision:\n  - id: a\n    critique: 3\n    revision: r\n",
     "critique_revision.0.critique"),
    ("critique_revision: {a: 1}\n", "critique_revision"),
    ("judge:\n  - id: a\n    txt: x\n", "judge.0"),
    ("critique_revision:\n  - {id: a, critique: c, revision: r}\n"
     "  - {id: a, critique: c, revision: r}\n",
     "duplicate ids"),
    ("judge:\n  - {id: a, text: t}\njudge_fewshot:\n  - {prompt: p, options: [x, y], answer: A, "
     "principle: b}\n", "judge_fewshot.0.principle"),
])
def test_bad_constitutions(tmp_path, text, where):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(InputError) as err:
        load_constitution(f)
    assert str(f) in str(err.value) and where in str(err.value)


def test_bad_encoding_and_json(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_bytes(b"name: \xff\n")
    with pytest.raises(InputError, match="not UTF-8"):
        load_constitution(f)
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"constitutions": [{"critic": "x"}]})[:-5])
    with pytest.raises(InputError, match="line 1"):
        load_constitution(j)
    with pytest.raises(InputError, match="not found"):
        load_constitution(tmp_path / "nope.yaml")
