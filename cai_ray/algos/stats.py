"""Masked and grouped statistics over rollouts, pure tensors (no ray, deepspeed or vllm).

Shapes: B rollouts, T response tokens; `mask` (B, T) is 1 on real response tokens; `group` (B,) is a
long tensor, equal for rollouts of the same prompt (the samples a group estimator compares).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cai_ray.algos.lazy import torch

if TYPE_CHECKING:
    from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim=None) -> Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim)


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


def group_index(group: Tensor) -> tuple[Tensor, int]:
    """Group labels (B,) of any values -> dense indices 0..G-1 (B,) and G."""
    _, dense = torch.unique(group, return_inverse=True)
    return dense, int(dense.max()) + 1 if dense.numel() else 0


def group_stats(x: Tensor, group: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-rollout statistics of its group: mean, unbiased std (0 for a group of one) and size, each
    (B,). x: (B,) sequence values."""
    idx, g = group_index(group)
    x = x.to(torch.float64)
    count = torch.zeros(g, dtype=torch.float64).index_add_(0, idx, torch.ones_like(x))
    mean = torch.zeros(g, dtype=torch.float64).index_add_(0, idx, x) / count
    sq = torch.zeros(g, dtype=torch.float64).index_add_(0, idx, (x - mean[idx]) ** 2)
    std = (sq / (count - 1).clamp_min(1.0)).sqrt()
    return mean[idx], std[idx], count[idx]
