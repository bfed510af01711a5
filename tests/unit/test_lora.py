"""LoRA pieces without Ray: the export (merged or adapter alone), the adapter payload and its
merge into base weights, and the target-module check (cai_ray/train/lora.py)."""

import pytest
import torch

from cai_ray.engines.adapter import merged_pairs
from cai_ray.errors import InputError
from cai_ray.train import lora
from cai_ray.train.spec import LoraSpec

LORA = LoraSpec(rank=2, alpha=4, dropout=0.0, target_modules=("q_proj", "down_proj"))


def trained_peft(tiny_model):
    from transformers import AutoModelForCausalLM

    peft = lora.apply(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                      LORA, "CAUSAL_LM")
    torch.manual_seed(0)
    with torch.no_grad():  # peft starts B at zero: make the adapter do something
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return peft.eval()


class Engine:  # what export_model reads from a DeepSpeed engine
    def __init__(self, module):
        self.module = module


def test_export_merged_and_adapter(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from cai_ray.train.dist import export_model

    peft = trained_peft(tiny_model)
    export_model(Engine(peft), tmp_path / "merged")
    export_model(Engine(peft), tmp_path / "adapter", "adapter")
    assert (tmp_path / "merged" / "config.json").exists()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < \
        (tmp_path / "merged" / "model.safetensors").stat().st_size / 10
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 33, 70, 2]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft(input_ids=ids).logits, atol=1e-4)
        plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        assert not torch.allclose(plain(ids).logits, merged(ids).logits, atol=1e-3)


def test_payload_merged_on_the_engine_side_equals_the_merged_model(tiny_model):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    peft = trained_peft(tiny_model)
    payload = lora.adapter_payload(peft)
    want = lora.merged_copy(peft).state_dict()
    got = dict(merged_pairs(tiny_model, payload))
    assert set(got) <= set(want) and len(got) >= len(want) - 1  # a tied head is not in the file
    for k, v in got.items():
        assert torch.allclose(v, want[k], atol=1e-6), k
    fresh = lora.adapter_payload(lora.apply(AutoModelForCausalLM.from_pretrained(tiny_model),
                                            LORA, "CAUSAL_LM"))  # B = 0: the base itself
    base = dict(merged_pairs(tiny_model, fresh))
    stored = load_file(f"{tiny_model}/model.safetensors")
    assert all(torch.equal(base[k], v) for k, v in stored.items())


def test_target_modules_checked_against_the_model(tiny_model):
    lora.check_targets(tiny_model, ["q_proj", "v_proj", "gate_proj"], "sft.lora.target_modules")
    with pytest.raises(InputError, match=r"sft.lora.target_modules: \['qkv_proj'\] not in"):
        lora.check_targets(tiny_model, ["q_proj", "qkv_proj"], "sft.lora.target_modules")


def test_lora_trainers_get_jemalloc_and_full_ones_glibc_unless_the_env_says(monkeypatch):
    from cai_ray.train import dist

    monkeypatch.delenv("CAI_RAY_ALLOCATOR", raising=False)
    assert (dist.trainer_allocator(True), dist.trainer_allocator(False)) == ("jemalloc", "glibc")
    lib = dist.jemalloc_lib()
    assert dist.trainer_env(False) == {}
    assert dist.trainer_env(True) == ({"LD_PRELOAD": lib} if lib else {})
    monkeypatch.setenv("CAI_RAY_ALLOCATOR", "glibc")
    assert dist.trainer_env(True) == {}
    monkeypatch.setenv("CAI_RAY_ALLOCATOR", "jemalloc")
    assert dist.trainer_allocator(False) == "jemalloc"


def _sft_loss_and_saved(tiny_model, cfg):
    """SftTask's loss on one batch of a model prepared as cfg asks, its trainable parameters'
    gradients, and the bytes autograd kept for the backward pass."""
    from transformers import AutoModelForCausalLM

    from cai_ray.train.sft import SftTask

    torch.manual_seed(0)
    model = lora.prepare(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                         cfg).train()
    if cfg.lora is not None:
        with torch.no_grad():  # B starts at zero: let the adapters change the loss
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)

    class Eng:
        device = torch.device("cpu")
        module = model

    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :8] = -100
    kept: dict[int, int] = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = SftTask(64).step(Eng, {"input_ids": ids, "labels": labels,
                                         "attention_mask": torch.ones_like(ids)})
    loss.backward()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads, sum(v for k, v in kept.items() if k not in weights)


@pytest.mark.parametrize("adapters", [None, LORA], ids=["full", "lora"])
def test_gradient_checkpointing_same_gradients_fewer_saved_activations(tiny_model, adapters):
    from cai_ray.train.spec import TrainSpec

    plain = _sft_loss_and_saved(tiny_model, TrainSpec(lora=adapters))
    ckpt = _sft_loss_and_saved(tiny_model, TrainSpec(lora=adapters, gradient_checkpointing=True))
    assert ckpt[0] == pytest.approx(plain[0], rel=1e-6)
    assert ckpt[1].keys() == plain[1].keys() and plain[1]
    for n, g in plain[1].items():
        assert torch.allclose(ckpt[1][n], g, atol=1e-6), n
        assert g.abs().sum() > 0, n  # the adapters (or every weight) do get a gradient
    assert ckpt[2] < 0.6 * plain[2], (ckpt[2], plain[2])


def test_bf16_compute_keeps_fp32_weights_and_gradients_and_tracks_the_fp32_loss(tiny_model):
    """precision bf16 is autocast (train/dist.compute): the step's matmuls run in bf16, the
    parameters and their gradients stay fp32 (the master weights), and the loss stays within
    bf16's rounding of fp32's."""
    from transformers import AutoModelForCausalLM

    from cai_ray.train.dist import compute
    from cai_ray.train.sft import SftTask

    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    out = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).train()
        seen = []
        hook = model.get_output_embeddings().register_forward_hook(
            lambda m, i, o: seen.append(o.dtype))

        class Eng:
            device = torch.device("cpu")
            module = model

        with compute(precision, Eng.device):
            loss, _ = SftTask(64).step(Eng, batch)
        loss.backward()
        hook.remove()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(g.dtype == torch.float32 for g in grads)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        out[precision] = (float(loss), seen[0])
    assert out["fp32"][1] == torch.float32 and out["bf16"][1] == torch.bfloat16
    assert out["bf16"][0] != out["fp32"][0]  # it did compute in bf16
    assert abs(out["bf16"][0] - out["fp32"][0]) < 0.02 * abs(out["fp32"][0])
