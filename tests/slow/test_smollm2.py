"""SmolLM2-135M-Instruct checks (minutes; `make test-slow`, not in CI)."""

import pytest

from cai_ray.generation import Request, Sampling

pytestmark = pytest.mark.slow


def test_vllm_and_transformers_agree_on_smollm2():
    """Share of prompts whose first 32 greedy tokens agree in float32 (a systematic mismatch, e.g.
    a wrong chat template, would put this near 0; numeric noise flips only a few late tokens)."""
    from cai_ray import models
    from cai_ray.engines.factory import make_engine
    from cai_ray.prompts.sources import load_prompts

    path = models.resolve("smollm2-135m-instruct")
    ps = load_prompts(["builtin:red_team", "builtin:helpful"]).prompts[:32]
    reqs = [Request(p.id, messages=[{"role": "user", "content": p.prompt}]) for p in ps]
    s = Sampling(max_tokens=32)
    hf = make_engine("hf", path, dtype="float32", batch_size=8).generate(reqs, s)
    vl = make_engine("vllm", path, dtype="float32", cpu_cores="0-1").generate(reqs, s)
    same = sum(a[0].token_ids[:32] == b[0].token_ids[:32] for a, b in zip(hf, vl))
    assert same / len(reqs) >= 0.8, same
