"""Rollouts and experience: the records the RL roles pass between them, and the batching of them.

    Rollout     one sampled answer: prompt and response ids, the sampler's log-probs, the policy
                version that produced it, its prompt's group
    Experience  a padded batch of rollouts with what the algorithm needs; tensors (B, T) unless
                noted; values / ref_logp / old_logp are None when no role produced them
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor


@dataclass
class Rollout:
    prompt_id: str
    prompt: str
    prompt_ids: list[int]
    response_ids: list[int]
    response: str
    policy_version: int
    group: int                   # one id per (iteration, prompt): the samples a group compares
    sampler_logp: list[float] = field(default_factory=list)
    finish_reason: str = "stop"


@dataclass
class Experience:
    prompt_ids: list[list[int]]
    response: Tensor              # (B, T) response token ids, pad 0
    mask: Tensor                  # (B, T) 1 on response tokens
    sampler_logp: Tensor          # (B, T) the engine's log-probs of the sampled tokens
    score: Tensor                 # (B,) the reward source's score
    group: Tensor                 # (B,) long
    versions: list[int]
    old_logp: Tensor | None = None      # (B, T) the learner's, before this iteration's update
    ref_logp: Tensor | None = None      # (B, T) the reference model's
    values: Tensor | None = None        # (B, T) the critic's, before each token
    advantages: Tensor | None = None    # (B, T)
    returns: Tensor | None = None       # (B, T) the critic's target

    def __len__(self) -> int:
        return self.response.shape[0]

    def select(self, idx: list[int]) -> "Experience":
        """The rollouts at idx, every field alike."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                out[f.name] = None
            elif isinstance(v, Tensor):
                out[f.name] = v[idx]
            else:
                out[f.name] = [v[i] for i in idx]
        return Experience(**out)

    def trim(self) -> "Experience":
        """Drop the padding columns no rollout uses (after select)."""
        width = max(1, int(self.mask.sum(-1).max())) if len(self) else 1
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[:, :width] if isinstance(v, Tensor) and v.dim() == 2 else v
        return Experience(**out)


def concat(parts: list[Experience]) -> Experience:
    """Experiences one after another, (B, T) fields padded to the widest; a field missing in any
    part is missing in the result."""
    width = max(p.response.shape[1] for p in parts)
    out = {}
    for f in fields(Experience):
        vals = [getattr(p, f.name) for p in parts]
        if any(v is None for v in vals):
            out[f.name] = None
        elif isinstance(vals[0], Tensor):
            out[f.name] = torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[1]))
                                     if v.dim() == 2 else v for v in vals])
        else:
            out[f.name] = [x for v in vals for x in v]
    return Experience(**out)


def pad_right(rows: list[list], value=0, dtype=torch.long) -> tuple[Tensor, Tensor]:
    """Ragged rows -> (B, W) tensor and a (B, W) float mask of the real entries."""
    width = max(1, max((len(r) for r in rows), default=1))
    out = torch.full((len(rows), width), value, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        if r:
            out[i, :len(r)] = torch.tensor(r, dtype=dtype)
            mask[i, :len(r)] = 1.0
    return out, mask


def pad_responses(responses: list[list[int]]) -> tuple[Tensor, Tensor]:
    return pad_right(responses)


def join_sequences(prompt_ids: list[list[int]], responses: list[list[int]], pad_id: int):
    """prompt + response, right-padded: ids, attention mask (B, L) and each prompt length (B,)."""
    seqs = [p + r for p, r in zip(prompt_ids, responses)]
    ids, att = pad_right(seqs, pad_id)
    return ids, att.long(), torch.tensor([len(p) for p in prompt_ids])


def response_selector(prompt_lens: Tensor, mask: Tensor, length: int) -> Tensor:
    """(B, L) bool: the positions of the joined sequence that predict a response token (position
    prompt_len - 1 + t predicts token t), where mask (B, T) is 1. Row-major order of the selected
    positions equals row-major order of the mask's ones."""
    B, T = mask.shape
    pos = prompt_lens.unsqueeze(1) - 1 + torch.arange(T, device=mask.device)[None]  # (B, T)
    sel = torch.zeros((B, length), dtype=torch.bool, device=mask.device)
    keep = mask.bool() & (pos < length)
    sel[torch.arange(B, device=mask.device).unsqueeze(1).expand(B, T)[keep], pos[keep]] = True
    return sel


def scatter_tokens(values: Tensor, mask: Tensor) -> Tensor:
    """Per-token values in mask order (N,) -> (B, T), 0 where mask is 0."""
    out = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    out[mask.bool()] = values
    return out


def response_lists(response: Tensor, mask: Tensor) -> list[list[int]]:
    return [r[:int(m.sum())].tolist() for r, m in zip(response, mask)]
