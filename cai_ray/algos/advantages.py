"""PPO's arithmetic on rollouts, pure tensors (no ray, deepspeed or vllm).

Shapes: B rollouts, T response tokens; `mask` is 1 on real response tokens (right-padded).
References: Schulman et al. 2016 (GAE), Ziegler et al. 2019 (KL-penalised reward, adaptive KL),
Schulman 2020 "Approximating KL divergence" (k1, k2, k3 estimators).
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor, dim=None) -> Tensor:
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp_min(1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked entries; masked-out entries become 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy.

    k1 = log p - log q (unbiased, can be negative); k2 = (log p - log q)^2 / 2;
    k3 = (q/p - 1) - log(q/p) (unbiased, non-negative). Shapes (B, T).
    """
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d ** 2
    if kind == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {kind!r}")


def penalised_rewards(score: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor,
                      kl_coef: float) -> tuple[Tensor, Tensor]:
    """Per-token rewards: -kl_coef * KL_t on every token, plus the sequence score on the last one.

    score: (B,); logp, ref_logp, mask: (B, T). Returns rewards (B, T) and per-token KL (B, T).
    """
    kl = kl_estimate(logp, ref_logp, "k1") * mask
    rewards = -kl_coef * kl
    last = (mask.sum(-1).long() - 1).clamp_min(0)  # (B,)
    rewards[torch.arange(score.shape[0]), last] += score
    return rewards * mask, kl


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


def ppo_policy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor,
                    clip: float = 0.2) -> tuple[Tensor, dict]:
    """Clipped surrogate (Schulman et al. 2017): -min(r A, clip(r, 1-e, 1+e) A), token mean."""
    ratio = torch.exp(logp - old_logp)  # (B, T)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * adv
    loss = masked_mean(-torch.minimum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1).abs() > clip).float(), mask)
        approx_kl = masked_mean(0.5 * (logp - old_logp) ** 2, mask)
        ratio_mean = masked_mean(ratio, mask)
    return loss, {"ppo/clipfrac": float(clipfrac), "ppo/approx_kl": float(approx_kl),
                  "ppo/ratio_mean": float(ratio_mean)}


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip: float = 0.2) -> tuple[Tensor, dict]:
    """Clipped value loss: 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -e, e) - R)^2)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    frac = masked_mean(((values - returns) ** 2 < (clipped - returns) ** 2).float(), mask)
    return loss, {"ppo/value_clipfrac": float(frac)}


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean token entropy of the policy: logits (B, T, V), mask (B, T)."""
    logp = torch.log_softmax(logits.float(), -1)
    ent = -(logp.exp() * logp).sum(-1)
    return masked_mean(ent, mask)


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
