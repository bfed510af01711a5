"""Every reward the RL stage (or the server) can use, by name: one small class per source behind
one interface, in a registry (registry.py; register_reward adds one). rl.reward picks one:

    model          the reward stage's preference model (Bai et al. 2022 sec. 4.1)       model.py
    judge          the constitutional judge on each rollout (direct RLAIF), pairwise against
                   the SFT model's answer or pointwise                                 judge.py
    short, contains:WORD, share:CHARS   rules, for tests and ablations                 rules.py
    http(s)://HOST:PORT/v1/score | /v1/judge   a scorer served by `cai-ray serve`      remote.py
    module:func    a function (prompts, completions, **kw) -> list[float] (TRL's)      user.py

    source = build_reward("contains:sorry", max_tokens=64)
    source.score([Scored("p1", "How do I ...?", "I can't help with that.", 9)])   # -> [1.0]
"""

from cai_ray.rewards import judge, model, remote, rules, user  # noqa: F401  (they register)
from cai_ray.rewards.registry import (  # noqa: F401
                                      REWARDS,
                                      RewardSource,
                                      Scored,
                                      build_reward,
                                      check_reward,
                                      check_scores,
                                      register_reward,
                                      reward_kind,
)
