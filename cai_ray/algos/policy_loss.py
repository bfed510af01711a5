"""Policy and value losses, their aggregation, and rollout correction. Pure tensors (no ray,
deepspeed or vllm); tested against numbers computed by hand. Shapes: B rollouts, T response
tokens; `mask` (B, T) is 1 on response tokens.

    loss, m = policy_loss(logp, old_logp, adv, mask, clip_low=0.2, clip_high=0.28)
    loss, m = POLICY_LOSSES["ppo_clip"](logp, old_logp, adv, mask, **knobs)   # by name

Registered by name (rl.policy_loss): register_policy_loss("mine") on a function with
policy_loss's signature (knobs it does not use arrive as keywords it may ignore); a loss that
reads more of the experience names the fields in `fn.needs` (dpo_pair: ref_logp, group).

References: Schulman et al. 2017 (clipped surrogate); Ye et al. 2020 (dual clip); Yu et al. 2025
(DAPO: clip-higher, token mean); Zheng et al. 2025 (GSPO: sequence-level ratio); Liu et al. 2025
(Dr. GRPO); Yao et al. 2025 (truncated importance sampling against sampler/learner mismatch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from cai_ray.algos.kl import kl_estimate
from cai_ray.algos.lazy import torch
from cai_ray.algos.stats import masked_mean

if TYPE_CHECKING:
    from torch import Tensor

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
RATIO_LEVELS = ("token", "sequence")
MAX_LOG_RATIO = 20.0  # exp() of more overflows float32 long before it means anything


def aggregate_denominator(mask: Tensor, mode: str) -> float:
    """What `aggregate` divides by: answer tokens (token_mean) or answers with a token (others)."""
    if mode == "token_mean":
        return float(mask.sum())
    return float((mask.sum(-1) > 0).sum())


def aggregate(x: Tensor, mask: Tensor, mode: str = "token_mean", *, norm_len: float | None = None,
              denom: float | None = None) -> Tensor:
    """A per-token loss (B, T) -> a scalar.

    token_mean               sum of x over every answer token / the number of tokens (DAPO)
    seq_mean_token_mean      the mean over answers of each answer's token mean (GRPO's paper)
    seq_mean_token_sum_norm  the mean over answers of sum(x) / norm_len (Dr. GRPO; norm_len: the
                             longest answer allowed, default T)

    denom: what to divide by when this batch is one micro-batch of an optimizer step (the step's
    token or answer count, see aggregate_denominator), so the micro-batches' gradients add up to the
    step's aggregate; default: this batch's own.
    """
    m = mask.to(x.dtype)
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose from {AGGREGATIONS}")
    d = aggregate_denominator(mask, mode) if denom is None else denom
    if mode == "token_mean":
        total = (x * m).sum()
    elif mode == "seq_mean_token_mean":
        total = ((x * m).sum(-1) / m.sum(-1).clamp_min(1.0)).sum()
    else:
        total = (x * m).sum() / float(norm_len or x.shape[-1])
    return total / max(d, 1.0)


def log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """log(pi / pi_old) per token (B, T). level 'sequence' (GSPO): every token of an answer carries
    the answer's mean log-ratio as its value, with the gradient of its own log-prob."""
    d = logp - old_logp
    if level == "token":
        return d.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    if level == "sequence":
        seq = masked_mean(d, mask, dim=-1).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # (B,)
        return seq.detach().unsqueeze(-1) + logp - logp.detach()
    raise ValueError(f"unknown importance ratio level {level!r}; choose from {RATIO_LEVELS}")


PolicyLoss = Callable[..., "tuple[Tensor, dict]"]
POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str):
    def deco(fn: PolicyLoss) -> PolicyLoss:
        POLICY_LOSSES[name] = fn
        return fn
    return deco


@register_policy_loss("ppo_clip")
def policy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, *,
                clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float | None = None,
                ratio_level: str = "token", agg: str = "token_mean",
                norm_len: float | None = None, denom: float | None = None,
                weights: Tensor | None = None, **_) -> tuple[Tensor, dict]:
    """Clipped surrogate: per token max(-r A, -clip(r, 1 - clip_low, 1 + clip_high) A), then, with
    dual_clip c > 1 and A < 0, at most -c A; times `weights` (B, T) (rollout correction, no
    gradient); aggregated by `agg`. logp carries the gradient; old_logp and adv do not."""
    lr = log_ratio(logp, old_logp, mask, ratio_level)
    ratio = torch.exp(lr)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(pg1, pg2)
    dual = torch.zeros_like(per_token, dtype=torch.bool)
    if dual_clip is not None:
        pg3 = -adv * dual_clip
        dual = (adv < 0) & (per_token > pg3)
        per_token = torch.where(adv < 0, torch.minimum(per_token, pg3), per_token)
    if weights is not None:
        per_token = per_token * weights.detach()
    loss = aggregate(per_token, mask, agg, norm_len=norm_len, denom=denom)
    with torch.no_grad():
        metrics = {"policy/clipfrac": float(masked_mean((pg2 > pg1).float(), mask)),
                   "policy/clipfrac_low": float(masked_mean(((ratio < 1 - clip_low) & (adv < 0))
                                                            .float(), mask)),
                   "policy/clipfrac_high": float(masked_mean(((ratio > 1 + clip_high) & (adv > 0))
                                                             .float(), mask)),
                   "policy/dual_clipfrac": float(masked_mean(dual.float(), mask)),
                   "policy/approx_kl": float(masked_mean(0.5 * (logp - old_logp) ** 2, mask)),
                   "policy/ratio_mean": float(masked_mean(ratio, mask))}
    return loss, metrics


@register_policy_loss("dpo_pair")
def dpo_pair_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, *, ref_logp: Tensor,
                  group: Tensor, beta: float = 0.1, denom: float | None = None,
                  **_) -> tuple[Tensor, dict]:
    """Online DPO on the policy's own samples: in each group the answer with advantage > 0 is
    chosen and the one with advantage < 0 rejected (estimator best_worst); per pair
    -log sigmoid(beta * h), h = sum(logp - ref)_chosen - sum(logp - ref)_rejected, summed and
    divided by denom / 2 (the step's answers / 2: its pairs), so micro-batches add up to the
    step's mean. ref_logp (B, T), group (B,): from the experience (needs, below)."""
    lr = ((logp - ref_logp) * mask).sum(-1)  # (B,) the answer's summed log-ratio
    sign = torch.sign((adv * mask).sum(-1))  # (B,)
    chosen, rejected = [], []
    for g in torch.unique(group):
        c = ((group == g) & (sign > 0)).nonzero().flatten()
        r = ((group == g) & (sign < 0)).nonzero().flatten()
        if len(c) == 1 and len(r) == 1:
            chosen.append(int(c[0]))
            rejected.append(int(r[0]))
    if not chosen:  # no pair here (a zero-weight pass): a zero that keeps the graph
        return (logp * 0.0).sum(), {"dpo/pairs": 0.0}
    h = lr[chosen] - lr[rejected]  # (P,)
    loss = -torch.nn.functional.logsigmoid(beta * h).sum() / max((denom or 2 * len(chosen)) / 2,
                                                                   1.0)
    with torch.no_grad():
        m = {"dpo/pairs": float(len(chosen)), "dpo/margin": float(beta * h.mean()),
             "dpo/accuracy": float((h > 0).float().mean()),
             "dpo/chosen_logratio": float(lr[chosen].mean()),
             "dpo/rejected_logratio": float(lr[rejected].mean())}
    return loss, m


dpo_pair_loss.needs = ("ref_logp", "group")  # what the learner passes besides the usual


def kl_loss(logp: Tensor, ref_logp: Tensor, mask: Tensor, kind: str = "k3",
            agg: str = "token_mean", **agg_kw) -> Tensor:
    """KL to the reference as a loss term (GRPO's k3), aggregated like the policy loss."""
    return aggregate(kl_estimate(logp, ref_logp, kind), mask, agg, **agg_kw)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip: float = 0.2, denom: float | None = None) -> tuple[Tensor, dict]:
    """Clipped value loss: 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -e, e) - R)^2), token
    mean (over `denom` tokens when given)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    per_token = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    loss = 0.5 * aggregate(per_token, mask, "token_mean", denom=denom)
    frac = masked_mean(((values - returns) ** 2 < (clipped - returns) ** 2).float(), mask)
    return loss, {"critic/value_clipfrac": float(frac)}


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean token entropy: logits (B, T, V), mask (B, T)."""
    logp = torch.log_softmax(logits.float(), -1)
    ent = -(logp.exp() * logp).sum(-1)
    return masked_mean(ent, mask)


# -- rollout correction: the sampler (vLLM) and the learner disagree on log-probs --------------

def tis_weights(learner_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float = 2.0,
                level: str = "token") -> Tensor:
    """Truncated importance sampling: w = min(pi_learner / pi_sampler, cap), (B, T), no gradient.
    level 'sequence': one weight per answer, from its summed log-ratio."""
    d = (learner_logp - sampler_logp).detach() * mask
    if level == "sequence":
        d = d.sum(-1, keepdim=True).expand_as(d)
    return torch.exp(d.clamp(max=MAX_LOG_RATIO)).clamp(max=cap) * mask


def mismatch(learner_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> dict:
    """How far the sampler's log-probs are from the learner's on the sampled tokens: the mean
    absolute difference, and KL(sampler || learner) estimated with k3 on the sampler's samples."""
    d = (sampler_logp - learner_logp).detach()
    return {"mismatch/abs_logp_diff": float(masked_mean(d.abs(), mask)),
            "mismatch/kl": float(masked_mean(torch.expm1(-d) + d, mask)),
            "mismatch/max_abs_logp_diff": float((d.abs() * mask).max()) if mask.any() else 0.0}
