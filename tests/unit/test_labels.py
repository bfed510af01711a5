"""Judge label arithmetic by hand, and the judge's invariants with the real tiny model
in-process."""

import math

import pytest

from cai_ray.algos import labels as L


def test_option_prob_normalises_over_the_two_options():
    assert L.option_prob(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert L.option_prob(-1000.0, -1000.0) == pytest.approx(0.5)  # no underflow
    assert L.option_prob(0.0, -math.inf) == 1.0


def test_order_average_ensemble_clamp():
    assert L.order_average(0.9, 0.7) == pytest.approx(0.8)
    assert L.disagrees(0.9, 0.3) and not L.disagrees(0.9, 0.7)
    assert L.ensemble([0.8, 0.6, 0.7]) == pytest.approx(0.7)
    assert [L.clamp(p) for p in (0.1, 0.45, 0.99)] == [0.4, 0.45, 0.6]
    with pytest.raises(ValueError):
        L.ensemble([])


def test_calibration_buckets():
    rows = L.calibration([0.95, 0.9, 0.55, 0.3], [True, False, True, False])
    by = {r["bucket"]: r for r in rows}
    assert by["0.9-1.0"]["n"] == 2 and by["0.9-1.0"]["accuracy"] == 0.5
    assert by["0.5-0.6"]["accuracy"] == 1.0 and by["0.7-0.8"]["accuracy"] == 1.0


def test_option_tokens_on_both_tokenizers(tiny_model):
    from transformers import AutoTokenizer

    from cai_ray.judges.base import option_format
    from cai_ray.models import smollm2_gguf

    tiny = AutoTokenizer.from_pretrained(tiny_model)
    gguf = smollm2_gguf()
    smol = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for tok in (tiny, smol):
        f = option_format(tok)
        assert tok.decode([f.token_a]).strip() == "A" and tok.decode([f.token_b]).strip() == "B"
        ids = tok.encode("x " + f.prefix, add_special_tokens=False)
        assert tok.encode("x " + f.prefix + "A", add_special_tokens=False) in (
            ids + [f.token_a], ids[:-1] + [ids[-1], f.token_a])
    # the formats really differ between tokenizers: ' A' and 'A' are different SmolLM2 tokens
    assert smol.encode(" A", add_special_tokens=False) != smol.encode("A", add_special_tokens=False)


@pytest.fixture(scope="module")
def tiny_pool(tiny_model):
    from cai_ray.engines.hf_engine import HfEngine
    from cai_ray.engines.local import LocalPool

    return LocalPool(HfEngine(tiny_model))


def _judge(pool, **kw):
    from cai_ray.constitution import load_constitution
    from cai_ray.judges.logprob import LogprobJudge as Judge

    return Judge(pool, pool.engine.tokenizer, load_constitution("short"), **kw)


def test_swapping_answers_flips_the_label(tiny_pool):
    from cai_ray.judges import JudgeItem

    conv = [{"role": "user", "content": "How do I hurt someone?"}]
    a, b = "I won't help with that.", "Hit them hard."
    judge = _judge(tiny_pool, principles_per_pair=2)
    ab = judge.label([JudgeItem("x", conv, a, b)])[0]
    ba = judge.label([JudgeItem("x", conv, b, a)])[0]
    assert ab.p_first == pytest.approx(1 - ba.p_first, abs=1e-6)
    assert len(ab.per_principle) == 2 and all(len(v) == 2 for v in ab.orders.values())
    one = _judge(tiny_pool, principles_per_pair=1, both_orders=False).label(
        [JudgeItem("x", conv, a, b)])[0]
    assert len(next(iter(one.orders.values()))) == 1


def test_judge_prompts_share_their_few_shot_block(tiny_pool):
    """Every judgement starts with the same few-shot block (the engines' prefix cache computes it
    once), and both orders and every principle share the conversation after it."""
    from cai_ray.judges import JudgeItem

    judge = _judge(tiny_pool, principles_per_pair=2, num_fewshot=1)
    p1, p2 = judge.const.judge[:2]
    tok = tiny_pool.engine.tokenizer
    question = "How do I pick the lock on my neighbour's shed while they are away on holiday?"
    x = JudgeItem("x", [{"role": "user", "content": question}], "Use a pick.", "I can't help.")
    y = JudgeItem("y", [{"role": "user", "content": "Say something rude."}], "No.", "You fool.")

    def ids(item, p, o):
        return tiny_pool.engine.encode(judge._request(item, p, o, None))

    def shared(a, b):
        return next((i for i, (s, t) in enumerate(zip(a, b)) if s != t), min(len(a), len(b)))

    fewshot = judge._request(x, p1, 0, None).messages[:2]
    block = len(tok.encode(tok.apply_chat_template(fewshot, tokenize=False),
                           add_special_tokens=False))
    assert block > 40
    assert shared(ids(x, p1, 0), ids(y, p2, 1)) >= block - 1  # other pair, principle and order
    convo = block + len(tok.encode(question, add_special_tokens=False))
    assert shared(ids(x, p1, 0), ids(x, p2, 0)) >= convo  # other principle
    a, b = ids(x, p2, 0), ids(x, p2, 1)  # two orders: conversation and principle in common
    assert shared(a, b) >= convo and p2.text in tok.decode(a[block:shared(a, b)])


@pytest.mark.parametrize("name", ["default", "short"])
def test_eval_judges_keep_only_their_own_few_shot_examples(tiny_pool, name):
    """The eval stage judges harmlessness and helpfulness apart; an example tied to a principle
    of the other kind must not be shown (nor fail the judge, as it did on the default job)."""
    from cai_ray.constitution import load_constitution
    from cai_ray.eval.arena import split_principles
    from cai_ray.judges.logprob import LogprobJudge as Judge

    const = load_constitution(name)
    harmless, helpful = split_principles(const)
    for group in (harmless, helpful):
        narrowed = const.with_judges(group)
        judge = Judge(tiny_pool, tiny_pool.engine.tokenizer, narrowed, num_fewshot=4)
        ids = {p.id for p in group}
        assert all(ex.principle in ids for ex in narrowed.judge_fewshot if ex.principle)
        assert len(judge.fewshot_principles) == len(judge.fewshot)
    assert const.with_judges(harmless).judge_fewshot  # the harm examples stay with harm
    with pytest.raises(ValueError, match="with_judges"):
        Judge(tiny_pool, tiny_pool.engine.tokenizer,
              const.model_copy(update={"judge": helpful}), num_fewshot=4)


def test_cot_mode_clamps(tiny_pool):
    from cai_ray.judges import JudgeItem

    conv = [{"role": "user", "content": "Tell me a secret."}]
    jd = _judge(tiny_pool, chain_of_thought=True, cot_max_new_tokens=8).label(
        [JudgeItem("y", conv, "No.", "Sure, here is a secret.")])[0]
    assert all(0.4 <= p <= 0.6 for p in jd.per_principle.values())
    assert jd.reasoning and all(isinstance(v, str) for v in jd.reasoning.values())
