"""DPO on the training core (2 CPU workers, gloo, tiny model): it learns a preference that is
learnable, and the reference log-probs stored with the data are the reference model's."""

import json

import pytest
import torch

from cai_ray.config.sections import DpoCfg
from tests.integration.test_trainers import marker_rows, write_data

pytestmark = pytest.mark.integration


def dpo_cfg(**kw):
    base = dict(num_workers=2, zero_stage=2, micro_batch_size=4, lr=5e-4, epochs=3, beta=0.5,
                checkpoint_every=100, lr_schedule="constant", loss_type="cdpo")
    return DpoCfg(**{**base, **kw})


def test_dpo_learns_a_marker_and_stores_the_reference(ray_cluster, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai_ray.train.core import fit
    from cai_ray.train.dist import compute
    from cai_ray.train.dpo import DpoTask, ref_path
    from cai_ray.train.spec import TrainSpec

    data = write_data(tmp_path / "data", marker_rows(64, 0), marker_rows(32, 1))
    task_kw = dict(max_len=128, beta=0.5, loss_type="cdpo")
    spec = TrainSpec.of(dpo_cfg())  # precision auto: bf16 where this CPU has bf16 instructions
    m = fit(DpoTask(**task_kw), tiny_model, data, spec, tmp_path / "out")
    recs = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    first = recs[0]
    # held-out pairs: chosen over rejected above chance, and a wider margin than at the start (0:
    # the policy is the reference there)
    assert m["eval/rewards/accuracy"] > 0.8, m
    assert m["eval/rewards/margin"] > 0.05, m
    # and the training pairs, step by step after the first (the last step's loss alone is no
    # measure: at this learning rate it swings between 0.3 and 4 from step to step, and with soft
    # labels the loss rises again once margins overshoot the target)
    acc = [r["train/rewards/accuracy"] for r in recs[1:]]
    assert sum(acc) / len(acc) > 0.7, acc
    assert 0 <= first["perf/pad_share"] < 1

    # the stored reference log-probs (computed with each pair's prompt run once, the default)
    # equal a fresh forward of the reference (initial) model, each sequence on its own, in the
    # trainer's precision (to bf16's rounding where that is bf16)
    refs = [json.loads(x) for x in ref_path(data, spec.precision).read_text().splitlines()]
    assert len(refs) == 96
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    t = DpoTask(**task_kw, share_prompt=False)  # each answer a sequence of its own: the plain way
    rows = marker_rows(32, 1)[:6]
    batch = t.collate(t.encode(rows, tok), tok.pad_token_id or 0)

    class Plain:  # what policy_logprobs reads from a DeepSpeed engine
        module, device = ref, torch.device("cpu")

    with torch.no_grad(), compute(spec.precision, "cpu"):
        c, r = t.policy_logprobs(Plain, batch)
    tol = 1e-3 if spec.precision == "fp32" else 0.01 * float(c.abs().max())
    stored = {(x["split"], x["i"]): (x["chosen"], x["rejected"]) for x in refs}
    for i in range(6):
        assert stored[("eval", i)] == pytest.approx((float(c[i]), float(r[i])), abs=tol)
