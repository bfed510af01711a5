"""Padding-free packing (cai_ray/train/packing.py): the layout by hand, and on the tiny model the
packed batch gives the padded batch's SFT loss and gradients and DPO's sequence log-probs, with no
attention across sequences."""

import pytest
import torch

from cai_ray.algos.losses import IGNORE
from cai_ray.train.packing import forward_inputs, pack


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


def model(tiny_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).train()


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
        padded = sequence_logprobs(m, DpoTask(packing=False).collate(items, 0), "cpu")
        packed = sequence_logprobs(m, DpoTask(packing=True).collate(items, 0), "cpu")
    assert padded.shape == packed.shape == (4,)
    assert torch.allclose(packed, padded, atol=1e-4)
