"""RL algorithms as registered presets over the estimators and losses (pure; no ray, deepspeed or
vllm). An algorithm is a name and its defaults; the job file picks one (`rl.algorithm`) and may
override any knob (`rl.clip_high: 0.28`). It declares the roles it needs: a critic only for the gae
estimator, a reference model only when the KL coefficient is above 0.

    alg = resolve("grpo", clip_high=0.28)      # Algorithm(advantage="grpo", ...)
    alg.needs_critic, alg.needs_reference      # False, True

Adding one is a registration: register_algorithm(Algorithm("mine", advantage="rloo", ...)); its
estimator and policy loss are names in their own registries (advantages.py, policy_loss.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from cai_ray.algos.advantages import ESTIMATORS
from cai_ray.algos.policy_loss import POLICY_LOSSES

KL_PLACES = ("reward", "loss")
KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclass(frozen=True)
class Algorithm:
    name: str
    advantage: str                     # an estimator in algos.advantages.ESTIMATORS
    kl_coef: float = 0.0
    kl_in: str = "loss"                # "reward": a per-token penalty; "loss": a loss term
    kl_estimator: str = "k3"
    clip_low: float = 0.2
    clip_high: float = 0.2             # > clip_low: clip-higher (DAPO)
    dual_clip: float | None = None     # c > 1 bounds the loss of negative advantages (Ye et al.)
    ratio_level: str = "token"         # "sequence": GSPO
    loss_agg: str = "token_mean"
    dynamic_sampling: bool = False     # drop groups whose rewards are all equal (DAPO)
    policy_loss: str = "ppo_clip"      # a loss in algos.policy_loss.POLICY_LOSSES
    beta: float = 0.1                  # dpo_pair: the DPO temperature
    pairs_only: bool = False           # train on the rollouts with a nonzero advantage only
    about: str = ""

    @property
    def needs_critic(self) -> bool:
        return ESTIMATORS[self.advantage].needs_critic

    @property
    def grouped(self) -> bool:
        return ESTIMATORS[self.advantage].grouped

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0 or "ref_logp" in self.loss_needs

    @property
    def loss_needs(self) -> tuple[str, ...]:
        """Experience fields the policy loss reads besides log-probs, advantages and the mask."""
        return tuple(getattr(POLICY_LOSSES[self.policy_loss], "needs", ()))


ALGORITHMS: dict[str, Algorithm] = {}
KNOBS = tuple(f.name for f in fields(Algorithm) if f.name not in ("name", "about"))


def register_algorithm(alg: Algorithm) -> Algorithm:
    if alg.advantage not in ESTIMATORS:
        raise ValueError(f"algorithm {alg.name}: unknown estimator {alg.advantage!r}")
    if alg.policy_loss not in POLICY_LOSSES:
        raise ValueError(f"algorithm {alg.name}: unknown policy loss {alg.policy_loss!r}")
    ALGORITHMS[alg.name] = alg
    return alg


def resolve(name: str, **overrides) -> Algorithm:
    """The preset `name` with every override that is not None laid over it."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose from {sorted(ALGORITHMS)}")
    return replace(ALGORITHMS[name], **{k: v for k, v in overrides.items() if v is not None})


register_algorithm(Algorithm(
    "ppo", "gae", kl_coef=0.05, kl_in="reward", kl_estimator="k1",
    about="PPO with a critic and a per-token KL penalty in the reward (Bai et al. 2022 sec. 4)"))
register_algorithm(Algorithm(
    "grpo", "grpo", kl_coef=0.04, kl_in="loss", kl_estimator="k3", loss_agg="seq_mean_token_mean",
    about="GRPO (Shao et al. 2024): group-normalised rewards, no critic, k3 KL in the loss"))
register_algorithm(Algorithm(
    "dr_grpo", "dr_grpo", kl_coef=0.0, loss_agg="seq_mean_token_sum_norm",
    about="Dr. GRPO (Liu et al. 2025): no std scaling, no length normalisation"))
register_algorithm(Algorithm(
    "dapo", "grpo", kl_coef=0.0, clip_low=0.2, clip_high=0.28, loss_agg="token_mean",
    dynamic_sampling=True,
    about="DAPO (Yu et al. 2025): clip-higher, token-mean loss, dynamic sampling, no KL"))
register_algorithm(Algorithm(
    "gspo", "grpo", kl_coef=0.0, clip_low=3e-4, clip_high=4e-4, ratio_level="sequence",
    loss_agg="seq_mean_token_mean",
    about="GSPO (Zheng et al. 2025): a sequence-level importance ratio"))
register_algorithm(Algorithm(
    "rloo", "rloo", kl_coef=0.05, kl_in="reward", kl_estimator="k1",
    about="RLOO (Ahmadian et al. 2024): leave-one-out baseline, KL in the reward"))
register_algorithm(Algorithm(
    "reinforce_pp", "reinforce_pp", kl_coef=0.01, kl_in="reward", kl_estimator="k1",
    about="REINFORCE++ (Hu 2025): KL-penalised token returns normalised over the batch"))
register_algorithm(Algorithm(
    "online_dpo", "best_worst", kl_coef=0.0, policy_loss="dpo_pair", pairs_only=True,
    loss_agg="seq_mean_token_mean",
    about="online DPO (Guo et al. 2024): the best and worst of k samples, ranked by the judge or "
          "a reward, become a DPO pair against the fixed reference"))
register_algorithm(Algorithm(
    "reinforce_pp_baseline", "reinforce_pp_baseline", kl_coef=0.01, kl_in="loss",
    kl_estimator="k2",
    about="REINFORCE++-baseline: the group mean subtracted from the score, KL in the loss"))
