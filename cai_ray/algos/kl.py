"""The KL term between the policy and the reference, pure tensors (no ray, deepspeed or vllm).

Two places it can go: a per-token penalty in the reward (PPO, Ziegler et al. 2019; RLOO;
REINFORCE++) or a term of the loss (GRPO, Shao et al. 2024, with the k3 estimator). Estimators from
Schulman 2020, "Approximating KL divergence". Shapes: B rollouts, T response tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cai_ray.algos.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy, (B, T).

    k1 = log p - log q (unbiased, can be negative); k2 = (log p - log q)^2 / 2;
    k3 = (q/p - 1) - log(q/p) (unbiased, non-negative).
    """
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d ** 2
    if kind == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {kind!r} (k1, k2, k3)")


def token_rewards(score: Tensor, mask: Tensor, kl: Tensor | None = None,
                  kl_coef: float = 0.0) -> Tensor:
    """Per-token rewards (B, T): -kl_coef * kl_t on every token, plus the sequence score (B,) on the
    last response token. kl: (B, T) per-token KL estimate, or None for no penalty."""
    rewards = torch.zeros_like(mask, dtype=torch.float32)
    if kl is not None and kl_coef:
        rewards = rewards - kl_coef * kl.float()
    last = (mask.sum(-1).long() - 1).clamp_min(0)  # (B,)
    rewards[torch.arange(score.shape[0]), last] += score.float()
    return rewards * mask


def penalised_rewards(score: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor,
                      kl_coef: float, kind: str = "k1") -> tuple[Tensor, Tensor]:
    """PPO's reward: token_rewards with the KL estimate of logp against ref_logp. Returns rewards
    (B, T) and the per-token KL (B, T), 0 on padding."""
    kl = kl_estimate(logp, ref_logp, kind) * mask
    return token_rewards(score, mask, kl, kl_coef), kl


class AdaptiveKLController:
    """Ziegler et al. 2019: move the KL coefficient so the observed KL tracks a target.
    beta <- beta * (1 + clip((KL - target) / target, -0.2, 0.2) * n / horizon)."""

    def __init__(self, init: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n_steps: int) -> float:
        err = max(-0.2, min(0.2, (kl - self.target) / self.target))
        self.value *= 1 + err * n_steps / self.horizon
        return self.value


class FixedKLController:
    def __init__(self, value: float):
        self.value = value

    def update(self, kl: float, n_steps: int) -> float:
        return self.value
