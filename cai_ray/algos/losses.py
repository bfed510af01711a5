"""Losses as pure functions of tensors. No ray, deepspeed or vllm here; tested against hand numbers.

Shapes: B batch, T sequence length, V vocabulary. Masks are 1 where a token counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log p(targets) under logits: logits (B, T, V), targets (B, T) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)


def sft_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, dict]:
    """Causal-LM cross entropy on the tokens whose label is not IGNORE (assistant tokens).

    logits: (B, T, V) for input positions; labels: (B, T), IGNORE where no loss. Position t predicts
    labels[t + 1]. Returns the mean over counted tokens, and the token count.
    """
    shift_logits = logits[:, :-1]  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    mask = (shift_labels != IGNORE).float()
    n = mask.sum()
    nll = -token_logprobs(shift_logits, shift_labels) * mask  # (B, T-1)
    loss = nll.sum() / n.clamp_min(1.0)
    return loss, {"tokens": float(n)}


def label_positions(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Where the causal-LM loss counts: a (B, T) bool mask over input positions (position t predicts
    labels[t + 1]; the last position predicts nothing) and the targets there, (N,)."""
    sel = torch.zeros_like(labels, dtype=torch.bool)
    sel[:, :-1] = labels[:, 1:] != IGNORE
    return sel, labels[:, 1:][sel[:, :-1]]


def selected_sft_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, dict]:
    """sft_loss on the counted positions only: logits (N, V) there, targets (N,). Equal to
    sft_loss on the full (B, T, V) logits, without computing the rest."""
    n = targets.shape[0]
    loss = F.cross_entropy(logits.float(), targets, reduction="sum") / max(n, 1)
    return loss, {"tokens": float(n)}


def bradley_terry_loss(r_a: Tensor, r_b: Tensor, p_a: Tensor) -> tuple[Tensor, dict]:
    """Preference loss with soft labels (Bradley & Terry 1952; Bai et al. 2022 sec. 4.1 train the
    preference model on the feedback model's probabilities).

    r_a, r_b: (B,) scalar rewards of the two answers; p_a: (B,) probability that a is better
    (1.0 / 0.0 for hard labels). loss = -[p log s(ra - rb) + (1 - p) log s(rb - ra)].
    """
    margin = r_a.float() - r_b.float()  # (B,)
    p = p_a.float()
    loss = -(p * F.logsigmoid(margin) + (1 - p) * F.logsigmoid(-margin)).mean()
    acc = ((margin > 0).float() == (p > 0.5).float()).float().mean()
    return loss, {"accuracy": float(acc), "margin": float(margin.detach().mean())}
