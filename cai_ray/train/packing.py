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


def attention_4d(mask: torch.Tensor, attn: str, dtype: torch.dtype) -> torch.Tensor:
    """pack_pairs' (B, 1, T, T) mask (True: may attend) as the model's attention takes it: sdpa as
    it is; eager (and flex) add it to the scores, so 0 / the dtype's minimum; flash-attention
    kernels take no such mask."""
    if attn == "sdpa":
        return mask
    if "flash" in attn:
        raise ValueError(f"a shared DPO prompt needs sdpa or eager attention, not {attn}: set "
                         "dpo.share_prompt: false")
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


def forward_inputs(batch: dict, dev, attn: str = "sdpa", dtype=torch.float32) -> dict:
    """The backbone's keyword arguments for a padded, a packed or a prompt-sharing batch (never a
    KV cache); attn and dtype: the model's attention implementation and dtype."""
    if "mask4d" in batch:  # pack_pairs: the attention pattern itself, (B, 1, T, T)
        return {"input_ids": batch["input_ids"].to(dev),
                "attention_mask": attention_4d(batch["mask4d"], attn, dtype).to(dev),
                "position_ids": batch["position_ids"].to(dev), "use_cache": False}
    if "position_ids" in batch:  # packed: attention masked by sequence, from the positions
        return {"input_ids": batch["input_ids"].to(dev),
                "position_ids": batch["position_ids"].to(dev), "use_cache": False}
    return {"input_ids": batch["input_ids"].to(dev),
            "attention_mask": batch["attention_mask"].to(dev), "use_cache": False}


def shared_len(a: list[int], b: list[int], a_labels: list[int], b_labels: list[int],
               ignore: int) -> int:
    """How many leading tokens two sequences share as prompt: equal ids, neither labelled, and at
    least one token of each left after them (it is what the other half attends past)."""
    n = 0
    stop = min(len(a), len(b)) - 1
    while n < stop and a[n] == b[n] and a_labels[n] == ignore and b_labels[n] == ignore:
        n += 1
    return n


def pack_pairs(pairs: list[tuple[list[int], list[int], list[int], list[int]]], ignore: int,
               pad_id: int, one_row: bool = False) -> dict:
    """Preference pairs with their shared prompt computed once: each pair (chosen ids, chosen
    labels, rejected ids, rejected labels) becomes prompt + chosen tail + rejected tail, and the
    rejected tail attends to the prompt and itself, never to the chosen tail; its positions restart
    where the prompt ends. One row per pair, right-padded (one_row: all pairs back to back).
    Every scored token is predicted from the same tokens at the same positions as in its own
    sequence, so the log-probs equal the unshared batch's; the prompt's tokens run once.

        b = pack_pairs([([1, 2, 3], [-100, -100, 3], [1, 2, 4, 5], [-100, -100, 4, 5])], -100, 0)
        b["input_ids"]     # (1, 5)  1 2 3 4 5        prompt 1 2, chosen 3, rejected 4 5
        b["position_ids"]  # (1, 5)  0 1 2 2 3
        b["mask4d"][0, 0]  # (5, 5)  row 3 (token 4) sees 1 2 and itself, not 3
        b["pred"]          # (rows (N,), cols (N,)): 1 -> 3, 1 -> 4, 3 -> 5
        b["targets"], b["seq"]  # (N,) 3 4 5 and 0 1 1 (chosen of pair i: i, rejected: P + i)
    """
    rows: list[list[int]] = [[]]
    pos: list[list[int]] = [[]]
    blocks: list[list[tuple[int, int, int, int]]] = [[]]  # (offset, shared, chosen len, length)
    pr, pc, tg, sq = [], [], [], []
    npairs = len(pairs)
    for i, (c, cl, r, rl) in enumerate(pairs):
        if rows[-1] and not one_row:  # a new row for each pair
            for x in (rows, pos, blocks):
                x.append([])
        row, o = len(rows) - 1, len(rows[-1])
        s = shared_len(c, r, cl, rl, ignore)
        rows[-1] += c + r[s:]
        pos[-1] += list(range(len(c))) + list(range(s, len(r)))
        blocks[-1].append((o, s, len(c), len(c) + len(r) - s))
        for t in range(1, len(c)):  # chosen: position t - 1 predicts token t, in place
            if cl[t] != ignore:
                pr.append(row), pc.append(o + t - 1), tg.append(c[t]), sq.append(i)
        for t in range(1, len(r)):  # rejected: from the prompt, then from its own tail
            if rl[t] != ignore:
                col = t - 1 if t - 1 < s else len(c) + t - 1 - s
                pr.append(row), pc.append(o + col), tg.append(r[t]), sq.append(npairs + i)
    width = max(len(x) for x in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position = torch.zeros((len(rows), width), dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), 1, width, width), dtype=torch.bool)  # True: may attend
    for k, (x, p) in enumerate(zip(rows, pos)):
        ids[k, :len(x)], position[k, :len(x)], real[k, :len(x)] = (
            torch.tensor(x), torch.tensor(p), 1)
        for o, s, lc, n in blocks[k]:
            block = torch.ones(n, n, dtype=torch.bool).tril()
            block[lc:, s:lc] = False  # the rejected tail never sees the chosen one
            mask[k, 0, o:o + n, o:o + n] = block
        mask[k, 0, len(x):, len(x):] |= torch.eye(width - len(x), dtype=torch.bool)  # padding
    return {"input_ids": ids, "position_ids": position, "attention_mask": real, "mask4d": mask,
            "pred": (torch.tensor(pr, dtype=torch.long), torch.tensor(pc, dtype=torch.long)),
            "targets": torch.tensor(tg, dtype=torch.long),
            "seq": torch.tensor(sq, dtype=torch.long),
            "n_seqs": 2 * npairs}
