"""Advantage estimators, pure tensors (no ray, deepspeed or vllm), registered by name
(register_estimator). Shapes: B rollouts, T response tokens; `mask` (B, T) is 1 on answer tokens;
`group` (B,) equal for the samples of one prompt. Each returns advantages (B, T), 0 on padding,
and returns (B, T) for the critic's target, or None without a critic.

    spec = ESTIMATORS["grpo"]                  # .fn, .needs_critic, .grouped
    adv, returns = spec.fn(AdvantageInput(score, mask, group), AdvantageParams())

    gae                    Schulman et al. 2016, with a critic (PPO)
    grpo                   Shao et al. 2024: (r - group mean) / group std, one value per sequence
    dr_grpo                Liu et al. 2025 ("Dr. GRPO"): r - group mean, no std
    rloo                   Ahmadian et al. 2024: r minus the mean of the other samples of its prompt
    reinforce_pp           Hu 2025 (REINFORCE++): KL-penalised token returns, batch-normalised
    reinforce_pp_baseline  REINFORCE++ with the group mean subtracted from the score first
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from cai_ray.algos.kl import token_rewards
from cai_ray.algos.lazy import torch
from cai_ray.algos.stats import group_stats, whiten

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class AdvantageInput:
    score: Tensor                  # (B,) the reward source's score of each rollout
    mask: Tensor                   # (B, T) 1 on response tokens
    group: Tensor | None = None    # (B,) long, one id per prompt (group estimators)
    kl: Tensor | None = None       # (B, T) per-token KL to the reference, when KL is in the reward
    kl_coef: float = 0.0
    values: Tensor | None = None   # (B, T) critic values before each token (gae)

    def sequence_reward(self) -> Tensor:
        """(B,) score minus the KL penalty summed over the answer (KL in the reward), else score."""
        if self.kl is None or not self.kl_coef:
            return self.score.float()
        return self.score.float() - self.kl_coef * (self.kl * self.mask).sum(-1).float()

    def token_rewards(self) -> Tensor:
        """(B, T) -kl_coef * KL on every token and the score on the last one."""
        return token_rewards(self.score, self.mask, self.kl, self.kl_coef)


@dataclass(frozen=True)
class AdvantageParams:
    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True    # gae: normalise the advantages over the batch
    eps: float = 1e-6      # added to a group's std


Estimator = Callable[[AdvantageInput, AdvantageParams], "tuple[Tensor, Tensor | None]"]


@dataclass(frozen=True)
class EstimatorSpec:
    fn: Estimator
    needs_critic: bool = False
    grouped: bool = False
    """Compares the samples of one prompt: needs at least 2 samples per prompt."""


ESTIMATORS: dict[str, EstimatorSpec] = {}


def register_estimator(name: str, *, needs_critic: bool = False, grouped: bool = False):
    def deco(fn: Estimator) -> Estimator:
        ESTIMATORS[name] = EstimatorSpec(fn, needs_critic, grouped)
        return fn
    return deco


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last token is 0);
    A_t = delta_t + gamma * lam * A_{t+1}. Returns advantages and returns = A + V, both (B, T).
    """
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    m = mask.to(rewards.dtype)
    for t in reversed(range(T)):
        next_v = values[:, t + 1] * m[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last * (m[:, t + 1] if t + 1 < T else 0.0)
        adv[:, t] = last * m[:, t]
    return adv, (adv + values) * m


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """G_t = sum_{s >= t} gamma^(s - t) r_s over each answer's tokens, (B, T), 0 on padding."""
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    m = mask.to(rewards.dtype)
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running * (m[:, t + 1] if t + 1 < rewards.shape[1]
                                                     else 0.0)
        out[:, t] = running * m[:, t]
    return out


def _per_token(seq_adv: Tensor, mask: Tensor) -> Tensor:
    """A sequence-level advantage (B,) on every response token: (B, T)."""
    return seq_adv.float().unsqueeze(-1) * mask.float()


@register_estimator("gae", needs_critic=True)
def gae_estimator(x: AdvantageInput, p: AdvantageParams):
    if x.values is None:
        raise ValueError("the gae estimator needs critic values")
    adv, ret = gae(x.token_rewards(), x.values.float(), x.mask, p.gamma, p.lam)
    return (whiten(adv, x.mask) if p.whiten else adv), ret


@register_estimator("grpo", grouped=True)
def grpo(x: AdvantageInput, p: AdvantageParams):
    r = x.sequence_reward()
    mean, std, _ = group_stats(r, x.group)
    return _per_token((r - mean) / (std + p.eps), x.mask), None


@register_estimator("dr_grpo", grouped=True)
def dr_grpo(x: AdvantageInput, p: AdvantageParams):
    r = x.sequence_reward()
    mean, _, _ = group_stats(r, x.group)
    return _per_token(r - mean, x.mask), None


@register_estimator("rloo", grouped=True)
def rloo(x: AdvantageInput, p: AdvantageParams):
    """r_i - mean of the others = n / (n - 1) * (r_i - group mean)."""
    r = x.sequence_reward()
    mean, _, n = group_stats(r, x.group)
    return _per_token((r - mean) * n / (n - 1).clamp_min(1.0), x.mask), None


@register_estimator("reinforce_pp")
def reinforce_pp(x: AdvantageInput, p: AdvantageParams):
    returns = discounted_returns(x.token_rewards(), x.mask, p.gamma)
    return whiten(returns, x.mask), None


@register_estimator("reinforce_pp_baseline", grouped=True)
def reinforce_pp_baseline(x: AdvantageInput, p: AdvantageParams):
    mean, _, _ = group_stats(x.score.float(), x.group)
    shifted = AdvantageInput((x.score.float() - mean).float(), x.mask, x.group, x.kl, x.kl_coef)
    return reinforce_pp(shifted, p)


@register_estimator("best_worst", grouped=True)
def best_worst(x: AdvantageInput, p: AdvantageParams):
    """Online DPO's pair (Guo et al. 2024): +1 on the best answer of each group, -1 on the worst
    (the first of equals), 0 elsewhere and on a group whose scores are all equal."""
    r = x.sequence_reward().float()  # (B,)
    out = torch.zeros_like(r)
    for g in torch.unique(x.group):
        idx = (x.group == g).nonzero().flatten()
        rg = r[idx]
        if len(idx) < 2 or bool((rg == rg[0]).all()):
            continue
        out[idx[int(torch.argmax(rg))]] = 1.0
        out[idx[int(torch.argmin(rg))]] = -1.0
    return _per_token(out, x.mask), None
