"""The DeepSpeed training core under Ray Train: 2 CPU workers (gloo), tiny model."""

import random

import pytest
import torch

from cai_ray.config.sections import RewardCfg, SftCfg
from cai_ray.rundir.files import read_jsonl, write_jsonl_atomic
from cai_ray.train.reward import RewardTask
from cai_ray.train.sft import SftTask

pytestmark = pytest.mark.integration


def sft_rows(n=32, seed=0):
    rng = random.Random(seed)
    words = ["apple", "river", "stone", "cloud", "green", "tiger"]
    return [{"id": f"r{i}", "messages": [
        {"role": "user", "content": f"Say something about {rng.choice(words)}."},
        {"role": "assistant", "content": "I will answer kindly and safely."}]} for i in range(n)]


def write_data(folder, train, evals):
    write_jsonl_atomic(folder / "train.jsonl", train)
    write_jsonl_atomic(folder / "eval.jsonl", evals)
    return folder


def losses(out_dir):
    return [r["train/loss"] for r in read_jsonl(out_dir / "metrics.jsonl")]


def eval_loss_of_export(folder, evals) -> float:
    """The SFT eval loss of an exported model folder, computed here with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai_ray.algos.losses import sft_loss

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    task = SftTask()
    items = task.encode(evals, tok)
    total = n = 0.0
    with torch.no_grad():
        for k in range(0, len(items), 2):
            b = task.collate(items[k:k + 2], tok.pad_token_id)
            loss, mm = sft_loss(model(input_ids=b["input_ids"],
                                      attention_mask=b["attention_mask"]).logits, b["labels"])
            total, n = total + float(loss) * mm["tokens"], n + mm["tokens"]
    return total / n


@pytest.mark.parametrize("stage", [pytest.param(2, marks=pytest.mark.slow), 3])  # ZeRO-2 trains
# in every tiny-job test; ZeRO-3 (gathered export) only here
def test_sft_loss_falls_and_the_export_gives_the_same_eval_loss(ray_cluster, tiny_model,
                                                                tmp_path, stage):
    """Two workers: the loss falls, and the exported model (under ZeRO-3 gathered from the
    shards) loaded with plain transformers gives the trainer's own final eval loss."""
    from cai_ray.train.core import fit
    from cai_ray.train.spec import TrainSpec

    evals = sft_rows(4, seed=1)
    data = write_data(tmp_path / "data", sft_rows(32), evals)
    cfg = SftCfg(num_workers=2, zero_stage=stage, micro_batch_size=2, lr=3e-3, max_steps=8,
                 checkpoint_every=4, lr_schedule="constant",
                 precision="fp32")  # equal to rounding: fp32 (bf16 rounds by batch shape)
    m = fit(SftTask(), tiny_model, data, TrainSpec.of(cfg), tmp_path / "out")
    ls = losses(tmp_path / "out")
    assert len(ls) == 8 and ls[-1] < 0.6 * ls[0], ls
    assert m["eval/loss"] < ls[0]
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()
    assert (tmp_path / "out" / "model" / "tokenizer.json").exists()
    assert (tmp_path / "out" / "tensorboard").is_dir()
    assert eval_loss_of_export(tmp_path / "out" / "model", evals) == \
        pytest.approx(m["eval/loss"], rel=1e-4)


@pytest.mark.slow  # in `make test-slow` (CI time)
def test_accumulation_invariance(ray_cluster, tiny_model, tmp_path):
    """Batch 4 x accumulation 1 and batch 2 x accumulation 2 give the same losses."""
    from cai_ray.train.core import fit
    from cai_ray.train.spec import TrainSpec

    data = write_data(tmp_path / "data", sft_rows(16), sft_rows(2, seed=1))
    runs = {}
    for name, (mb, acc) in {"b4a1": (4, 1), "b2a2": (2, 2)}.items():
        cfg = SftCfg(num_workers=1, zero_stage=2, micro_batch_size=mb, grad_accum=acc, lr=1e-3,
                     max_steps=4, checkpoint_every=100, lr_schedule="constant", precision="fp32")
        fit(SftTask(), tiny_model, data, TrainSpec.of(cfg), tmp_path / name)
        runs[name] = losses(tmp_path / name)
    assert runs["b4a1"] == pytest.approx(runs["b2a2"], rel=1e-4, abs=1e-5)
    assert runs["b4a1"][-1] < runs["b4a1"][0]


def test_worker_killed_mid_training_resumes(ray_cluster, tiny_model, tmp_path):
    from cai_ray.train.core import fit
    from cai_ray.train.spec import TrainSpec

    data = write_data(tmp_path / "data", sft_rows(32), sft_rows(4, seed=1))
    cfg = SftCfg(num_workers=2, zero_stage=2, micro_batch_size=2, lr=1e-3, max_steps=6,
                 checkpoint_every=2, max_failures=1)
    m = fit(SftTask(), tiny_model, data, TrainSpec.of(cfg), tmp_path / "out", fail_at_step=3)
    steps = [r["step"] for r in read_jsonl(tmp_path / "out" / "metrics.jsonl")]
    # steps 1-3 ran, the worker died at 3; the group restarted from the step-2 checkpoint
    assert steps[:3] == [1, 2, 3] and steps[3] == 3 and steps[-1] == 6, steps
    assert m["step"] == 6 and (tmp_path / "out" / "model" / "config.json").exists()


def marker_rows(n, seed):
    rng = random.Random(seed)
    topics = ["the weather", "cooking rice", "a lost key", "homework", "a noisy neighbour",
              "a bike", "the garden", "a birthday", "a job interview", "a cold"]
    fillers = ["Sure, here is what I think about it.", "That depends on a few things.",
               "Let me explain this briefly.", "Here are some thoughts.", "Good question."]
    rows = []
    for i in range(n):
        a, b = rng.sample(fillers, 2)
        rows.append({"id": f"m{seed}-{i}", "prompt": f"Tell me about {rng.choice(topics)}.",
                     "chosen": f"{a} [SAFE]", "rejected": f"{b} [RISK]",
                     "p_chosen": rng.choice([0.8, 0.9, 1.0])})
    return rows


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["full", "lora"])  # LoRA stays in CI: test_rl, test_engines
def test_reward_model_learns_a_marker(ray_cluster, tiny_model, tmp_path, lora):
    """Full weights, or LoRA adapters with the fresh score head trained in full beside them; the
    merged export loads as an ordinary reward model."""
    from cai_ray.config.sections import LoraCfg
    from cai_ray.rewards.model import RewardScorer
    from cai_ray.train.core import fit
    from cai_ray.train.spec import TrainSpec

    held_out = marker_rows(32, 1)
    for r in held_out[::2]:  # the mixed preference model reports each source's accuracy
        r["source"] = "human"
    data = write_data(tmp_path / "data", marker_rows(64, 0), held_out)
    cfg = RewardCfg(num_workers=2, zero_stage=2, micro_batch_size=4, lr=2e-3, epochs=3,
                    checkpoint_every=100, lr_schedule="constant",
                    lora=LoraCfg(rank=8) if lora else None)
    m = fit(RewardTask(), tiny_model, data, TrainSpec.of(cfg), tmp_path / "out")
    assert m["eval/accuracy"] > 0.9, m
    assert m["eval/pairs/human"] == m["eval/pairs/ai"] == 16
    assert m["eval/accuracy/human"] > 0.85 and m["eval/accuracy/ai"] > 0.85, m
    assert (m["eval/accuracy/human"] + m["eval/accuracy/ai"]) / 2 == pytest.approx(
        m["eval/accuracy"])
    scorer = RewardScorer(str(tmp_path / "out" / "model"))
    held = marker_rows(16, 2)
    good = scorer.score([[{"role": "user", "content": r["prompt"]},
                          {"role": "assistant", "content": r["chosen"]}] for r in held])
    bad = scorer.score([[{"role": "user", "content": r["prompt"]},
                         {"role": "assistant", "content": r["rejected"]}] for r in held])
    assert sum(g > b for g, b in zip(good, bad)) / len(held) > 0.9


def test_deepspeed_starts_on_cpu_without_building_an_op(tmp_path):
    """DeepSpeed's CPU start JIT-builds a shared-memory op that training never uses, under a
    lock that a killed build leaves behind for every later start to wait on forever (this hung
    CI). init_deepspeed_comm starts the gloo group without building it. The script ends its group
    as a worker's teardown does: a gloo group left to interpreter exit can abort the process
    (SIGABRT, 'terminate called without an active exception'; pytorch issue 190489), which
    failed this test once in CI."""
    import os
    import subprocess
    import sys

    from cai_ray.engines.collective import free_port

    script = ("from cai_ray.platform import init_deepspeed_comm\n"
              "import deepspeed.comm as dist, torch\n"
              "init_deepspeed_comm(use_gpu=False)\n"
              "print('shm op:', dist.comm.cdb.shm_comm_op)\n"
              "t = torch.ones(2); dist.all_reduce(t); assert t.tolist() == [1.0, 1.0]\n"
              "dist.destroy_process_group()\n")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "shm op: None" in out.stdout
    assert not (tmp_path / "ext").exists() or not any((tmp_path / "ext").iterdir())


def test_packed_checkpointed_sft_trains_like_padded(ray_cluster, tiny_model, tmp_path):
    """Through Ray Train and DeepSpeed: SFT with padding-free packing and gradient checkpointing
    gives the padded, uncheckpointed run's losses step for step, with no padded position."""
    from cai_ray.train.core import fit
    from cai_ray.train.spec import TrainSpec

    rows = sft_rows(16)
    for i, r in enumerate(rows):  # answers of 1 to 4 sentences: padded batches have padding
        r["messages"][1]["content"] = " ".join(["I will answer kindly and safely."] * (i % 4 + 1))
    data = write_data(tmp_path / "data", rows, rows[:2])
    runs = {}
    for name, extra in {"padded": {}, "packed": {"gradient_checkpointing": True}}.items():
        cfg = SftCfg(num_workers=1, zero_stage=2, micro_batch_size=4, lr=1e-3, max_steps=4,
                     checkpoint_every=100, lr_schedule="constant", group_by_length=False,
                     precision="fp32", **extra)  # step-for-step equality: fp32
        fit(SftTask(max_len=512, packing=name == "packed"), tiny_model, data, TrainSpec.of(cfg),
            tmp_path / name)
        runs[name] = read_jsonl(tmp_path / name / "metrics.jsonl")
    assert [r["train/loss"] for r in runs["packed"]] == pytest.approx(
        [r["train/loss"] for r in runs["padded"]], rel=1e-4, abs=1e-5)
    assert all(r["perf/pad_share"] == 0 for r in runs["packed"])
    assert all(r["perf/pad_share"] > 0.05 for r in runs["padded"])
    assert runs["packed"][-1]["train/loss"] < runs["packed"][0]["train/loss"]
