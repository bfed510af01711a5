"""Padding-free packing and shared DPO prompts (cai_ray/train/packing.py): the layouts by hand,
and on the tiny model the packed batch gives the padded batch's SFT loss and gradients and DPO's
sequence log-probs, with no attention across sequences; a pair whose prompt runs once gives the
same log-probs, DPO loss and gradients as its two sequences apart."""

import pytest
import torch

from cai_ray.algos.losses import IGNORE
from cai_ray.train.packing import forward_inputs, pack, pack_pairs, shared_len


def test_layout_by_hand():
    b = pack([[5, 6, 7], [8, 9], [4]], [[IGNORE, 6, 7], [8, 9], [4]], IGNORE)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 4]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]
    # a sequence's first token is no target: the token before it belongs to another sequence
    assert b["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9, IGNORE]]
    assert b["seq"].tolist() == [0, 0, 0, 1, 1, 2]
    assert b["attention_mask"].tolist() == [[1] * 6]
    with pytest.raises(ValueError):
        pack([[1], []], [[1], []], IGNORE)


def rows(n: int = 4, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 6 + 5 * i  # 6, 11, 16, 21: a padded batch would be a third padding
        ids = torch.randint(3, 200, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * 3 + ids[3:]})
    return out


class Eng:
    device = torch.device("cpu")

    def __init__(self, module):
        self.module = module


def model(tiny_model, attn: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32,
                                                attn_implementation=attn).train()


def sft_loss_grads(tiny_model, packing: bool):
    from cai_ray.train.sft import SftTask

    m = model(tiny_model)
    task = SftTask(64, packing=packing)
    batch = task.collate(rows(), pad_id=0)
    loss, _ = task.step(Eng(m), batch)
    loss.backward()
    return batch, float(loss.detach()), {n: p.grad.clone() for n, p in m.named_parameters()}


def test_sft_packed_equals_padded(tiny_model):
    padded, loss, grads = sft_loss_grads(tiny_model, False)
    packed, loss_p, grads_p = sft_loss_grads(tiny_model, True)
    assert padded["input_ids"].shape == (4, 21) and packed["input_ids"].shape == (1, 54)
    assert loss_p == pytest.approx(loss, rel=1e-5)
    for n, g in grads.items():
        assert torch.allclose(grads_p[n], g, atol=1e-5, rtol=1e-4), n


def test_packed_sequences_do_not_attend_to_each_other(tiny_model):
    m = model(tiny_model).eval()
    backbone = m.model
    r = rows()
    b = pack([x["input_ids"] for x in r], [x["labels"] for x in r], IGNORE)
    changed = [list(x["input_ids"]) for x in r]
    changed[0] = [7] * len(changed[0])  # another first sequence, same length
    b2 = pack(changed, [x["labels"] for x in r], IGNORE)
    with torch.no_grad():  # (a KV cache would turn the per-sequence mask off: forward_inputs)
        h = backbone(**forward_inputs(b, "cpu")).last_hidden_state
        h2 = backbone(**forward_inputs(b2, "cpu")).last_hidden_state
        alone = backbone(input_ids=torch.tensor([r[1]["input_ids"]])).last_hidden_state
    rest = b["seq"] > 0
    assert torch.allclose(h[0, rest], h2[0, rest], atol=1e-5)  # the others never saw it
    assert not torch.allclose(h[0, ~rest], h2[0, ~rest], atol=1e-3)
    assert torch.allclose(h[0, b["seq"] == 1], alone[0], atol=1e-5)  # as if it were alone


def test_dpo_sequence_logprobs_packed_equal_padded(tiny_model):
    from cai_ray.train.dpo import DpoTask, sequence_logprobs

    r = rows()
    items = [{"chosen": r[i]["input_ids"], "chosen_labels": r[i]["labels"],
              "rejected": r[3 - i]["input_ids"], "rejected_labels": r[3 - i]["labels"],
              "p": 1.0, "ref": None} for i in range(2)]
    m = model(tiny_model).eval()
    with torch.no_grad():
        padded = sequence_logprobs(m, DpoTask(share_prompt=False).collate(items, 0), "cpu")
        packed = sequence_logprobs(m, DpoTask(packing=True, share_prompt=False).collate(items, 0),
                                   "cpu")
    assert padded.shape == packed.shape == (4,)
    assert torch.allclose(packed, padded, atol=1e-4)


def test_shared_prompt_layout_by_hand():
    X = IGNORE
    b = pack_pairs([([1, 2, 3], [X, X, 3], [1, 2, 4, 5], [X, X, 4, 5]),
                    ([6, 7], [X, 7], [8, 9, 9], [X, 9, 9])], X, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 9]]  # pair 2 shares nothing
    assert b["position_ids"].tolist() == [[0, 1, 2, 2, 3], [0, 1, 0, 1, 2]]
    m = b["mask4d"][0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                 [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]]  # the rejected tail skips the chosen token 3
    assert b["mask4d"][1, 0].int().tolist()[2] == [0, 0, 1, 0, 0]  # nor anything of pair 2's chosen
    rows_, cols = b["pred"]
    assert list(zip(rows_.tolist(), cols.tolist(), b["targets"].tolist(), b["seq"].tolist())) == [
        (0, 1, 3, 0), (0, 1, 4, 2), (0, 3, 5, 2),  # the prompt's last token predicts both answers
        (1, 0, 7, 1), (1, 2, 9, 3), (1, 3, 9, 3)]
    one = pack_pairs([([1, 2, 3], [X, X, 3], [1, 2, 4], [X, X, 4])] * 2, X, 0, one_row=True)
    assert one["input_ids"].tolist() == [[1, 2, 3, 4, 1, 2, 3, 4]]
    assert not one["mask4d"][0, 0, 4:, :4].any()  # the second pair never sees the first
    assert shared_len([1, 2], [1, 2], [X, X], [X, X], X) == 1  # a token of each is left


def pairs(n: int = 3, seed: int = 1) -> list[dict]:
    """Pairs with prompts of 4 to 12 tokens, answers of varied length, and one pair whose answers
    begin alike (the shared prompt stops where the labels start)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(3, 200, (4 + 4 * i,), generator=g).tolist()
        a = torch.randint(3, 200, (5 + 3 * i,), generator=g).tolist()
        b = (a[:2] if i == 1 else []) + torch.randint(3, 200, (9 - 2 * i,), generator=g).tolist()
        out.append({"chosen": prompt + a, "chosen_labels": [IGNORE] * len(prompt) + a,
                    "rejected": prompt + b, "rejected_labels": [IGNORE] * len(prompt) + b,
                    "p": 0.8, "ref": [-30.0 - i, -31.0 + i]})
    return out


@pytest.mark.parametrize("one_row,attn", [(False, "sdpa"), (True, "sdpa"), (False, "eager")])
def test_dpo_shared_prompt_equals_separate_sequences(tiny_model, one_row, attn):
    from cai_ray.train.dpo import DpoTask

    def loss_grads(share: bool):
        m = model(tiny_model, attn)
        task = DpoTask(beta=0.5, share_prompt=share, packing=one_row and share)
        batch = task.collate(pairs(), pad_id=0)
        lp = task.policy_logprobs(Eng(m), batch)
        loss, _ = task.step(Eng(m), batch)
        loss.backward()
        return batch, torch.cat(lp).detach(), float(loss), {
            n: p.grad.clone() for n, p in m.named_parameters()}

    sep, lp, loss, grads = loss_grads(False)
    shared, lp_s, loss_s, grads_s = loss_grads(True)
    assert shared["input_ids"].numel() < sep["input_ids"].numel()  # the prompts ran once
    assert int(shared["attention_mask"].sum()) == int(sep["attention_mask"].sum()) - 24
    assert torch.allclose(lp_s, lp, atol=1e-4), (lp_s, lp)
    assert loss_s == pytest.approx(loss, rel=1e-5)
    for n, g in grads.items():
        assert torch.allclose(grads_s[n], g, atol=1e-5, rtol=1e-4), n


def test_rejected_answer_never_sees_the_chosen_one(tiny_model):
    from cai_ray.train.dpo import DpoTask, sequence_logprobs

    m = model(tiny_model).eval()
    p = pairs()
    other = [dict(x) for x in p]
    other[0]["chosen"] = other[0]["chosen"][:4] + [7] * (len(other[0]["chosen"]) - 4)
    task = DpoTask()
    with torch.no_grad():
        a = sequence_logprobs(m, task.collate(p, 0), "cpu")
        b = sequence_logprobs(m, task.collate(other, 0), "cpu")
    assert not torch.isclose(a[0], b[0], atol=1e-3)  # the chosen answer changed
    assert torch.allclose(a[1:], b[1:], atol=1e-5)  # its rejected twin and the others did not


@pytest.mark.parametrize("share,packing", [(False, False), (False, True), (True, False),
                                           (True, True)])
def test_dpo_answer_lengths_are_the_scored_tokens_of_each_answer(share, packing):
    """ipo divides each log-ratio by batch["lengths"]: on every layout, the number of positions
    sequence_logprobs sums for that answer."""
    from cai_ray.train.dpo import DpoTask, scored_positions

    batch = DpoTask(share_prompt=share, packing=packing).collate(pairs(), pad_id=0)
    _, _, _, seqs, n = scored_positions(batch)
    counts = torch.bincount(seqs, minlength=n)  # (2B,): chosen answers, then rejected
    assert batch["lengths"].tolist() == torch.stack([counts[:n // 2], counts[n // 2:]], 1).tolist()
    assert batch["lengths"].tolist() == [[5, 9], [8, 9], [11, 5]]  # 5 + 3i; 9 - 2i (+2 at i=1)
