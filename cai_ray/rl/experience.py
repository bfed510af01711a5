"""Rollouts and experience: the records PPO passes between roles, and the batching of them.

    Rollout     one sampled answer: prompt ids, response ids, the policy version that produced it
    Experience  a padded batch of rollouts with everything PPO needs, tensors (B, T) unless noted
"""

from __future__ import annotations

from dataclasses import dataclass

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
    finish_reason: str = "stop"


@dataclass
class Experience:
    prompt_ids: list[list[int]]
    response: Tensor          # (B, T) response token ids, pad 0
    mask: Tensor              # (B, T) 1 on response tokens
    old_logp: Tensor          # (B, T) policy log-probs when sampled (learner's recomputation)
    ref_logp: Tensor          # (B, T) reference (SFT) log-probs
    values: Tensor            # (B, T) critic values before each token
    score: Tensor             # (B,) reward model / reward function score
    rewards: Tensor | None = None     # (B, T) KL-penalised per-token rewards
    advantages: Tensor | None = None  # (B, T)
    returns: Tensor | None = None     # (B, T)
    versions: list[int] | None = None

    def __len__(self) -> int:
        return self.response.shape[0]

    def select(self, idx: list[int]) -> "Experience":
        def pick(x):
            return None if x is None else x[idx]
        return Experience([self.prompt_ids[i] for i in idx], self.response[idx], self.mask[idx],
                          self.old_logp[idx], self.ref_logp[idx], self.values[idx],
                          self.score[idx], pick(self.rewards), pick(self.advantages),
                          pick(self.returns),
                          [self.versions[i] for i in idx] if self.versions else None)


def pad_responses(responses: list[list[int]]) -> tuple[Tensor, Tensor]:
    width = max(1, max(len(r) for r in responses))
    ids = torch.zeros((len(responses), width), dtype=torch.long)
    mask = torch.zeros((len(responses), width), dtype=torch.float32)
    for i, r in enumerate(responses):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1.0
    return ids, mask


def join_sequences(prompt_ids: list[list[int]], responses: list[list[int]], pad_id: int):
    """prompt + response, right-padded: ids, attention mask (B, L) and each prompt length (B,)."""
    seqs = [p + r for p, r in zip(prompt_ids, responses)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        att[i, :len(s)] = 1
    return ids, att, torch.tensor([len(p) for p in prompt_ids])


def response_positions(prompt_lens: Tensor, width: int) -> Tensor:
    """Index into the joined sequence of the position that predicts response token t:
    prompt_len - 1 + t, (B, T)."""
    return prompt_lens.unsqueeze(1) - 1 + torch.arange(width, device=prompt_lens.device)[None]


def gather_response(x: Tensor, prompt_lens: Tensor, width: int) -> Tensor:
    """x: (B, L, ...) over the joined sequence -> (B, T, ...) at response-predicting positions."""
    pos = response_positions(prompt_lens, width).clamp(max=x.shape[1] - 1)
    if x.dim() == 2:
        return x.gather(1, pos)
    return x.gather(1, pos.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
