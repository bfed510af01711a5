"""Training losses against numbers computed by hand."""

import math

import pytest
import torch

from cai_ray.algos.losses import (
    IGNORE,
    bradley_terry_loss,
    label_positions,
    selected_sft_loss,
    sft_loss,
)


def test_sft_loss_counts_only_labelled_tokens():
    # position 0 predicts label 0 with p = 1/2; position 1 predicts label 1 with p = 1/(3 + 1)
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE, 0, 1]])
    loss, m = sft_loss(logits, labels)
    assert float(loss) == pytest.approx((math.log(2) + math.log(4)) / 2, abs=1e-6)
    assert m["tokens"] == 2
    labels2 = torch.tensor([[IGNORE, IGNORE, 1]])
    assert float(sft_loss(logits, labels2)[0]) == pytest.approx(math.log(4), abs=1e-6)


def test_bradley_terry_hard_and_soft():
    ra, rb = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    hard, m = bradley_terry_loss(ra, rb, torch.tensor([1.0, 1.0]))
    # mean of log(1 + e^-1) and log 2
    assert float(hard) == pytest.approx((math.log1p(math.exp(-1)) + math.log(2)) / 2, abs=1e-6)
    soft, _ = bradley_terry_loss(ra[:1], rb[:1], torch.tensor([0.5]))
    assert float(soft) == pytest.approx(0.5 * (math.log1p(math.exp(-1)) + math.log1p(math.e)),
                                        abs=1e-6)
    flipped, _ = bradley_terry_loss(rb[:1], ra[:1], torch.tensor([0.0]))
    assert float(flipped) == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)
    assert m["accuracy"] == 0.5  # the tie counts as wrong for a label of 1


def test_lr_schedule():
    from cai_ray.train.core import lr_lambda

    f = lr_lambda("cosine", 2, 10)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0) and f(6) == pytest.approx(0.5) and f(10) == pytest.approx(0.0)
    assert lr_lambda("linear", 0, 4)(2) == pytest.approx(0.5)
    assert lr_lambda("constant", 0, 4)(3) == 1.0


def test_deepspeed_config():
    from cai_ray.config.sections import SftCfg
    from cai_ray.train.dist import deepspeed_config
    from cai_ray.train.spec import TrainSpec

    c = deepspeed_config(TrainSpec.of(SftCfg(zero_stage=3, micro_batch_size=2, grad_accum=3,
                                             offload_optimizer=True, precision="bf16")), 2)
    assert c["train_batch_size"] == 12 and c["zero_optimization"]["stage"] == 3
    assert c["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert c["optimizer"]["type"] == "AdamW"
    assert "bf16" not in c and "fp16" not in c  # bf16 is autocast: DeepSpeed keeps fp32 weights


def test_sft_labels_mask_everything_but_the_assistant(tiny_model):
    from transformers import AutoTokenizer

    from cai_ray.train.sft import assistant_labels

    tok = AutoTokenizer.from_pretrained(tiny_model)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]
    ids, labels = assistant_labels(msgs, tok, 512)
    kept = tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE])
    assert kept == "Hello!<|im_end|>\nCiao<|im_end|>\n"
    assert tok.decode(ids).startswith("<|im_start|>user\nHi")
    short_ids, short_labels = assistant_labels(msgs, tok, 10)
    assert len(short_ids) == len(short_labels) == 10


def test_selected_positions_give_the_full_sft_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, 1], [IGNORE, 2, IGNORE, 6, IGNORE]])
    sel, targets = label_positions(labels)
    assert sel.tolist() == [[False, True, True, True, False], [True, False, True, False, False]]
    assert targets.tolist() == [3, 4, 1, 2, 6]
    full, m_full = sft_loss(logits, labels)
    part, m_part = selected_sft_loss(logits[sel], targets)
    assert float(part) == pytest.approx(float(full), abs=1e-6)
    assert m_part["tokens"] == m_full["tokens"] == 5


def test_training_batches_drop_a_short_tail_evaluation_keeps_it():
    from cai_ray.train.core import batches

    items = [{"i": i} for i in range(7)]
    assert [len(b) for b in batches(items, 4, 0, 0)] == [4]
    assert [len(b) for b in batches(items, 4, 0, 0, shuffle=False, keep_last=True)] == [4, 3]
    assert [x["i"] for b in batches(items[:3], 4, 0, 0, shuffle=False, keep_last=True)
            for x in b] == [0, 1, 2]  # fewer eval rows than one batch still evaluate
