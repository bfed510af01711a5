"""The generative judge's verdict parsing and counting (cai_ray/judges/generative.py), on an
in-process pool whose engine writes chosen verdicts: every verdict is counted, parsed ones give 1
or 0 for the answer they name in its order, unparseable ones are ties and are reported."""

import pytest

from cai_ray.engines.local import LocalScheduler
from cai_ray.generation import Completion
from cai_ray.judges import JudgeItem
from cai_ray.judges.generative import GenerativeJudge, parse_verdict


@pytest.mark.parametrize("text, want", [
    ("(A)", "A"), ("The answer is: (B)", "B"), ("answer: B because", "B"),
    ("Option A is kinder", "A"), ("  B) the second", "B"), ("response is (a)", "A"),
    ("  b) lowercase alone", None),
    ("I cannot decide.", None), ("", None), ("Both are fine", None),
    ("(B) then later (A)", "B"),  # the first pattern that matches, its first match
])
def test_parse_verdict(text, want):
    assert parse_verdict(text) == want


class VerdictPool:
    """Answers every judge prompt with the verdict `say(prompt_text)` gives; the prompt is the
    real one the judge built (its id is item|principle|order)."""

    def __init__(self, say):
        self.say, self.asked = say, []

    def scheduler(self, sampling, batch_size=16, max_in_flight=1):
        def call(reqs):
            self.asked += [r.id for r in reqs]
            return [[Completion(r.id, self.say(r.id), [1], [1])] for r in reqs]
        return LocalScheduler(call, batch_size)


class Tok:
    """A tokenizer in which every letter is its own token: option_format's first format fits."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]


def judge(pool, **kw):
    from cai_ray.constitution import load_constitution

    return GenerativeJudge(pool, Tok(), load_constitution("short"), num_fewshot=0, **kw)


def test_verdicts_name_answers_in_their_order_and_unparsed_ones_are_ties():
    item = JudgeItem("x", [{"role": "user", "content": "Hi?"}], "first answer", "second answer")

    def always_a(rid):  # A is shown first: the first answer in order 0, the second in order 1
        return "The answer is: (A)"
    jd = judge(VerdictPool(always_a), principles_per_pair=2).label([item])[0]
    assert all(v == [1.0, 0.0] for v in jd.orders.values())  # pure position bias
    assert jd.p_first == 0.5 and jd.disagreements == 2 and jd.unparsed == 0

    def first_in_order_0(rid):
        return "(A)" if rid.endswith("|0") else "(B)"
    jd = judge(VerdictPool(first_in_order_0), principles_per_pair=2).label([item])[0]
    assert jd.p_first == 1.0 and jd.disagreements == 0

    pool = VerdictPool(lambda rid: "(A)" if rid.endswith("|0") else "no idea")
    jd = judge(pool, principles_per_pair=2).label([item])[0]
    assert len(pool.asked) == 4 and jd.unparsed == 2  # every verdict asked and counted
    assert all(v == [1.0, 0.5] for v in jd.orders.values())  # an unparsed verdict is a tie
    assert jd.p_first == pytest.approx(0.75)


def test_chain_of_thought_reads_the_verdict_after_the_reasoning():
    pool = VerdictPool(lambda rid: "(B) looks ruder. The answer is: (A)")
    item = JudgeItem("x", [{"role": "user", "content": "Hi?"}], "a", "b")
    jd = judge(pool, principles_per_pair=1, both_orders=False,
               chain_of_thought=True).label([item])[0]
    assert next(iter(jd.orders.values())) == [1.0]  # (A), not the (B) of the reasoning
