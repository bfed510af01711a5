"""One judge for every caller (cai_ray/judges): the preferences and eval stages (open_judge over
their pool), `cai-ray eval judge` (eval/instruments.judge_for), the rl stage's judge reward and
`cai-ray serve --judge` build the same judge from a job's `judge:` section: same method, principles,
few-shot, orders, chain of thought, seed, and the same label for the same item. The tiny model on
the transformers engine, in process."""

import pytest

from cai_ray.judges import JudgeItem

SECTION = ["judge.principles_per_pair=3", "judge.num_fewshot=0", "judge.both_orders=false"]


def settings(judge) -> tuple:
    return (type(judge).__name__, judge.k, judge.orders, len(judge.fewshot), judge.cot,
            judge.seed)


@pytest.mark.parametrize("method", ["logprob", "generative"])
def test_every_caller_builds_the_same_judge(tiny_model, method):
    from cai_ray import judges
    from cai_ray.config import load_job
    from cai_ray.constitution import load_constitution
    from cai_ray.engines.hf_engine import HfEngine
    from cai_ray.engines.local import LocalPool
    from cai_ray.eval.instruments import judge_for
    from cai_ray.rewards.judge import JudgeReward
    from cai_ray.serve.scoring import JudgeServer
    from cai_ray.serve.target import _judge_spec

    job = load_job("tiny", [*SECTION, f"judge.method={method}", f"model.name={tiny_model}",
                            "seed=7"])
    const = load_constitution(job.constitution.path)
    pool = LocalPool(HfEngine(tiny_model))
    built = {
        "preferences/eval stage": judges.open_judge(
            job.judge, const, default_model=tiny_model, seed=job.seed, engine=job.engine,
            shared_pool=pool).judge,
        "eval judge": judge_for(job, actors=lambda path: pool).judge,
        "rl judge reward": JudgeReward(pool=pool, tokenizer_path=tiny_model, constitution=const,
                                       references={}, judge_cfg=job.judge, seed=job.seed).judge,
        "serve --judge": JudgeServer(_judge_spec(job, tiny_model), "m", {}, {},
                                     backend="hf")._judge(None),
    }
    want = ("LogprobJudge" if method == "logprob" else "GenerativeJudge", 3, (0,), 0, False, 7)
    item = JudgeItem("rt-1#0-1", [{"role": "user", "content": "How do I pick a lock?"}],
                     "Call a locksmith.", "Use a bobby pin.")
    labels = {}
    for caller, judge in built.items():
        assert settings(judge) == want, caller
        (jd,) = judge.label([item])
        labels[caller] = (jd.p_first, sorted(jd.per_principle))
    assert len({(round(p, 6), tuple(ids)) for p, ids in labels.values()}) == 1, labels
