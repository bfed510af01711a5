"""Padding-free batches: a micro-batch's sequences back to back in one row.

    b = pack([[5, 6, 7], [8, 9]], [[-100, 6, 7], [-100, 9]], -100)
    b["input_ids"]     # (1, 5)  5 6 7 8 9
    b["position_ids"]  # (1, 5)  0 1 2 0 1   restarting at every sequence
    b["labels"]        # (1, 5)  -100 6 7 -100 9   (no sequence predicts the next one's first token)
    b["seq"]           # (5,)    0 0 0 1 1   the sequence of each position

Given position_ids and no attention mask, transformers finds the sequence starts and masks attention
block-diagonally (sdpa and eager through a mask; flash-attention on GPUs through its variable-length
kernel), so each token attends only to its own sequence, as in the padded batch, and no position is
padding. The same rows, the same targets: the loss equals the padded batch's.
"""

from __future__ import annotations

import torch


def pack(seqs: list[list[int]], labels: list[list[int]], ignore: int) -> dict:
    lengths = [len(s) for s in seqs]
    if not seqs or min(lengths) < 1:
        raise ValueError("pack: every sequence needs at least one token")
    ids = torch.tensor([t for s in seqs for t in s]).unsqueeze(0)  # (1, L)
    lab = torch.tensor([t for lb in labels for t in lb]).unsqueeze(0)  # (1, L)
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)  # (S,) first position of each sequence
    lab[0, starts] = ignore
    pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)  # (1, L)
    seq = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor(lengths))  # (L,)
    return {"input_ids": ids, "labels": lab, "position_ids": pos, "seq": seq,
            "attention_mask": torch.ones_like(ids)}  # all real tokens (pad_share counts 0)


def forward_inputs(batch: dict, dev) -> dict:
    """The backbone's keyword arguments for a padded or a packed batch (never a KV cache)."""
    if "position_ids" in batch:  # packed: attention masked by sequence, from the positions
        return {"input_ids": batch["input_ids"].to(dev),
                "position_ids": batch["position_ids"].to(dev), "use_cache": False}
    return {"input_ids": batch["input_ids"].to(dev),
            "attention_mask": batch["attention_mask"].to(dev), "use_cache": False}
