"""Direct preference losses (no reward model, no RL), pure torch; tested against hand numbers.

Every loss is a function of the pair's log-ratio difference and of a target q, the probability
that `chosen` is better; both orderings are weighed by it: loss = q * l(h) + (1 - q) * l(-h),

    h = (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))    (B,)
    dpo   l(h) = -log sigmoid(beta * h)                       Rafailov et al. 2023
    ipo   l(h) = (h - 1 / (2 * beta)) ** 2                    Azar et al. 2023
    cdpo  dpo's l, with q = the judge's soft label p_chosen   (conservative DPO: Mitchell 2023)

ipo as its authors ran it (and TRL): log-ratios per answer token, h = (pi_c - ref_c) / n_c -
(pi_r - ref_r) / n_r (`lengths` (B, 2)), so long answers do not dominate; ipo_per_token=False: sums.

q is 1 for hard labels (dpo, ipo) or p_chosen (cdpo, or soft_labels on), then smoothed:
q <- q (1 - eps) + (1 - q) eps. With q = 1 and eps = 0 every type is its plain form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_TYPES = ("dpo", "cdpo", "ipo")


def log_ratio_diff(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor,
                   lengths: Tensor | None = None) -> Tensor:
    """h: (B,) from the four (B,) sequence log-probabilities (sums over answer tokens); with
    lengths (B, 2: chosen, rejected token counts) each log-ratio per token."""
    c, r = pi_c.float() - ref_c.float(), pi_r.float() - ref_r.float()
    if lengths is not None:
        n = lengths.to(c.device).float().clamp(min=1)  # (B, 2)
        c, r = c / n[:, 0], r / n[:, 1]
    return c - r


def targets(p_chosen: Tensor, soft: bool, label_smoothing: float = 0.0) -> Tensor:
    """q: (B,), the weight of the `chosen is better` ordering."""
    q = p_chosen.float() if soft else torch.ones_like(p_chosen, dtype=torch.float32)
    return q * (1 - label_smoothing) + (1 - q) * label_smoothing


def ordering_loss(h: Tensor, beta: float, loss_type: str) -> Tensor:
    """l(h) for one ordering: (B,) -> (B,)."""
    if loss_type in ("dpo", "cdpo"):
        return -F.logsigmoid(beta * h)
    if loss_type == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    raise ValueError(f"unknown DPO loss type {loss_type!r}; choose from {LOSS_TYPES}")


def preference_loss(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, p_chosen: Tensor,
                    *, beta: float = 0.1, loss_type: str = "dpo", label_smoothing: float = 0.0,
                    soft_labels: bool | None = None, lengths: Tensor | None = None,
                    ipo_per_token: bool = True) -> tuple[Tensor, dict]:
    """Mean loss over the batch and its metrics (implicit rewards beta * log-ratio, their margin
    and accuracy, the policy's log-probabilities). soft_labels None: on for cdpo only. lengths
    (B, 2): the answers' token counts, which ipo (ipo_per_token) divides the log-ratios by."""
    soft = loss_type == "cdpo" if soft_labels is None else soft_labels
    if loss_type == "ipo" and ipo_per_token and lengths is None:
        raise ValueError("ipo per token needs the answers' token counts (lengths)")
    per_token = loss_type == "ipo" and ipo_per_token
    h = log_ratio_diff(pi_c, pi_r, ref_c, ref_r, lengths if per_token else None)  # (B,)
    q = targets(p_chosen.to(h.device), soft, label_smoothing)  # (B,)
    loss = (q * ordering_loss(h, beta, loss_type) + (1 - q) * ordering_loss(-h, beta, loss_type))
    with torch.no_grad():
        r_c = beta * (pi_c.float() - ref_c.float())
        r_r = beta * (pi_r.float() - ref_r.float())
        m = {"rewards/chosen": float(r_c.mean()), "rewards/rejected": float(r_r.mean()),
             "rewards/margin": float((r_c - r_r).mean()),
             "rewards/accuracy": float((r_c > r_r).float().mean()),
             "logps/chosen": float(pi_c.float().mean()),
             "logps/rejected": float(pi_r.float().mean())}
    return loss.mean(), m
