"""GPU checks for the paths the CPU machine cannot run, in one short script for a lent GPU machine:

  peak        bf16 matrix-multiply TFLOP/s of this card (the MFU denominator), measured here
  sft_zero2   our SFT task + our DeepSpeed config, ZeRO-2, bf16, on CUDA (NCCL group of one):
  sft_zero3   tokens/s, MFU, loss first/last on a learnable set, peak memory; and the same steps in
              a plain torch loop (AdamW, bf16 autocast) as the baseline ratio
  learner     the RL learner with a critic (policy + critic, each a DeepSpeed engine) on CUDA
              on synthetic experience, log-prob/value pass, the gathered-state time
  engine      the transformers engine on CUDA: batched generation vs a batch-1 loop, tokens/s
  nccl        the weight broadcast (cai_ray.collective) over NCCL between two processes

The device machine has no model hub and no Ray or vLLM (their wheels exceed what can be carried), so
the model is SmolLM2-135M's architecture and tokenizer with random weights (same shapes, same
FLOPs), and the roles run as the plain classes that the Ray actors wrap.

    python3 benchmarks/gpu_check.py --model-dir gpu_model --out $OUT   # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("lock garden recipe river market violin ladder planet pencil window harbor cotton "
         "meadow signal copper basket thunder marble").split()


CUDA = torch.cuda.is_available()  # False only in the CPU dry run (--dry-run) of this script
DEV = "cuda" if CUDA else "cpu"


def log(*a):
    print(*a, flush=True)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def reset_mem() -> None:
    if CUDA:
        torch.cuda.reset_peak_memory_stats()


def mem_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if CUDA else 0.0


def make_model(config_dir: Path, out: Path) -> str:
    """SmolLM2-135M's config and tokenizer with random weights, saved as safetensors."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    if (out / "model.safetensors").exists():
        return str(out)
    shutil.copytree(config_dir, out, dirs_exist_ok=True)
    cfg = AutoConfig.from_pretrained(out, trust_remote_code=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, trust_remote_code=False)
    model.save_pretrained(out, safe_serialization=True)
    return str(out)


def peak_tflops(n: int = 8192, reps: int = 10) -> float:
    """Median bf16 matmul rate on the GPU (fp32 n=1024 on the CPU dry run)."""
    if not CUDA:
        n, reps = 1024, 3
    dt = torch.bfloat16 if CUDA else torch.float32
    a = torch.randn(n, n, device=DEV, dtype=dt)
    b = torch.randn(n, n, device=DEV, dtype=dt)
    for _ in range(3):
        a @ b
    sync()
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / sorted(times)[len(times) // 2] / 1e12


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable set: the answer is a fixed pattern of the question's words."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        w = rng.sample(WORDS, 6)
        q = "Please list these words backwards: " + " ".join(w) + ". " + " ".join(
            rng.choice(WORDS) for _ in range(60))
        a = "Here they are, backwards: " + ", ".join(reversed(w)) + ". " + " ".join(
            reversed(w)) * 8
        rows.append({"messages": [{"role": "user", "content": q},
                                  {"role": "assistant", "content": a}]})
    return rows


def init_dist() -> None:
    from cai_ray.platform import init_deepspeed_comm

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29631", "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    init_deepspeed_comm(use_gpu=CUDA)


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable preference: the chosen answer carries a marker phrase."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q = "Tell me about " + " ".join(rng.sample(WORDS, 4))
        body = " ".join(rng.choice(WORDS) for _ in range(40))
        rows.append({"prompt": q, "chosen": "I will keep this safe and kind. " + body,
                     "rejected": body, "p_chosen": 0.9})
    return rows


def sft(model_dir: str, zero: int, steps: int, peak: float, batch: int = 8,
        max_len: int = 512, task_name: str = "sft") -> dict:
    import deepspeed
    from transformers import AutoTokenizer

    from cai_ray.train.dist import deepspeed_config
    from cai_ray.train.spec import TrainSpec
    from cai_ray.train.tasks import make_task

    init_dist()
    cfg = TrainSpec(zero_stage=zero, precision="bf16", micro_batch_size=batch, lr=1e-4,
                    use_gpu=CUDA)
    task = make_task(task_name, max_len=max_len)
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    rows = chat_rows(batch * 4) if task_name == "sft" else pair_rows(batch * 4)
    items = task.encode(rows, tok)
    model = task.build_model(model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                      optimizer=opt, config=deepspeed_config(cfg, 1))
    reset_mem()
    losses, toks, t0 = [], 0, None
    for s in range(steps):
        if s == min(3, steps - 1):  # warm-up steps are not timed
            sync()
            t0, toks = time.time(), 0
        b = task.collate(items[(s * batch) % len(items):][:batch], tok.pad_token_id or 0)
        engine.train()
        loss, m = task.step(engine, b)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
        toks += task.tokens(b)
    sync()
    tps = toks / (time.time() - t0)
    out = {"zero": zero, "params_m": n_params / 1e6, "tokens_per_s": tps,
           "mfu": 6 * n_params * tps / (peak * 1e12), "loss_first": losses[0],
           "loss_last": losses[-1], "peak_mem_gb": mem_gb(),
           **({"accuracy_last": m["accuracy"]} if "accuracy" in m else {})}
    del engine, opt, model
    torch.cuda.empty_cache() if CUDA else None
    return out


def plain_loop(model_dir: str, steps: int, batch: int = 8, max_len: int = 512) -> dict:
    """Baseline: the same steps, plain torch (AdamW, bf16 autocast), no DeepSpeed."""
    from transformers import AutoTokenizer

    from cai_ray.train.sft import SftTask

    task = SftTask(max_len=max_len)
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    items = task.encode(chat_rows(batch * 4), tok)
    model = task.build_model(model_dir).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses, toks, t0 = [], 0, None
    for s in range(steps):
        if s == min(3, steps - 1):  # warm-up steps are not timed
            sync()
            t0, toks = time.time(), 0
        b = task.collate(items[(s * batch) % len(items):][:batch], tok.pad_token_id or 0)
        with torch.autocast(DEV, dtype=torch.bfloat16):
            loss, _ = task.step(model, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        toks += task.tokens(b)
    sync()
    out = {"tokens_per_s": toks / (time.time() - t0), "loss_first": losses[0],
           "loss_last": losses[-1]}
    del model, opt
    torch.cuda.empty_cache() if CUDA else None
    return out


def learner(model_dir: str) -> dict:
    """The RL learner with a critic (PPO: policy and critic, each a DeepSpeed ZeRO-2 engine, bf16)
    on CUDA: the old log-probs and values, two epochs of updates, the weights streamed out."""
    from cai_ray.algos.stats import whiten
    from cai_ray.config.rl import RlCfg
    from cai_ray.rl.experience import Experience, pad_responses
    from cai_ray.rl.learner import Learner, step_plan
    from cai_ray.rl.spec import LearnerSpec

    init_dist()
    cfg = RlCfg(algorithm="ppo", use_gpu=CUDA, precision="bf16", zero_stage=2, update_epochs=2,
                mini_batch_size=8, micro_batch_size=8)
    t = time.time()
    ln = Learner(model_dir, LearnerSpec.of(cfg), critic_path=model_dir)
    ln.join(*ln.listen())
    start_s = time.time() - t
    g = torch.Generator().manual_seed(0)
    from transformers import AutoConfig

    V = AutoConfig.from_pretrained(model_dir, trust_remote_code=False).vocab_size
    B, P, T = 32, 64, 64  # 8 prompts x 4 answers x 64 new tokens, as the RL benchmark
    prompts = [torch.randint(10, V, (P,), generator=g).tolist() for _ in range(B // 4)]
    prompts = [p for p in prompts for _ in range(4)]
    resp, mask = pad_responses([torch.randint(10, V, (T,), generator=g).tolist()
                                for _ in range(B)])
    sync()
    t = time.time()
    logp, values = ln.logprobs(prompts, resp, mask), ln.values(prompts, resp, mask)
    sync()
    score_s = time.time() - t
    adv = whiten(torch.randn(B, T, generator=g), mask)
    exp = Experience(prompts, resp, mask, logp.clone(), torch.randn(B, generator=g),
                     torch.arange(B) // 4, [0] * B, old_logp=logp, values=values,
                     advantages=adv, returns=values + adv)
    plan = step_plan([P + T] * B, exp.group.tolist(), 1, 8, 8, 2)[0]
    reset_mem()
    t = time.time()
    m = ln.train(exp, plan)
    sync()
    train_s = time.time() - t
    t = time.time()
    meta = ln.weight_meta()
    nbytes = sum(len(b) for b in ln.weight_buckets(meta, 64))
    stream_s = time.time() - t
    return {"start_s": start_s, "score_s": score_s, "train_s": train_s,
            "stream_weights_s": stream_s, "state_mb": nbytes / 2 ** 20,
            "policy_loss": m.get("policy/loss"), "value_loss": m.get("critic/loss"),
            "finite": all(v == v for v in m.values()), "peak_mem_gb": mem_gb()}


def engine(model_dir: str) -> dict:
    from cai_ray.engines.hf_engine import HfEngine
    from cai_ray.generation import Request, Sampling

    eng = HfEngine(model_dir, dtype="bfloat16", batch_size=64)
    reqs = [Request(str(i), messages=[{"role": "user", "content": r["messages"][0]["content"]}])
            for i, r in enumerate(chat_rows(64, seed=1))]
    s = Sampling(max_tokens=64, temperature=1.0, seed=0)
    eng.generate(reqs[:4], s)  # warm-up
    sync()
    t = time.time()
    outs = eng.generate(reqs, s)
    sync()
    batched_s = time.time() - t
    batched_tokens = sum(len(o[0].token_ids) for o in outs)
    t = time.time()
    loop_tokens = sum(len(eng.generate([r], s)[0][0].token_ids) for r in reqs[:8])
    sync()
    loop_s = time.time() - t
    t = time.time()
    lps = eng.next_token_logprobs(reqs[:16], [eng.tokenizer.encode("A")[0],
                                              eng.tokenizer.encode("B")[0]])
    judge_s = time.time() - t
    return {"batched_tokens_per_s": batched_tokens / batched_s,
            "loop_tokens_per_s": loop_tokens / loop_s,
            "x_loop": (batched_tokens / batched_s) / (loop_tokens / loop_s),
            "option_logprobs_per_s": 16 / judge_s, "finite": all(x == x for r in lps for x in r)}


def _nccl_rank(rank: int, port: int, model_dir: str, q) -> None:
    try:
        from safetensors.torch import load_file

        from cai_ray.engines import collective as C

        if CUDA:
            torch.cuda.set_device(0)
        state = {k: v.to(DEV) for k, v in load_file(f"{model_dir}/model.safetensors").items()}
        meta = C.tensor_meta(state)
        group = C.open_group("127.0.0.1", port, rank, 2, "nccl" if CUDA else "gloo",
                             timeout_s=60)
        t = time.time()
        if rank == 0:
            n = C.send(group, state, meta)
            q.put((rank, {"bytes": n, "s": time.time() - t}))
        else:
            got = C.receive(group, meta, DEV)
            same = all(torch.equal(got[k], state[k]) for k in state)
            q.put((rank, {"equal": same, "s": time.time() - t}))
    except Exception as exc:  # reported, not raised: the parent records it
        q.put((rank, {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}))


def nccl(model_dir: str) -> dict:
    """Two ranks on the one GPU: NCCL refuses two ranks of a communicator on one device, so this
    records whether the broadcast runs here; on two GPUs the same code runs one rank per GPU."""
    import multiprocessing as mp

    from cai_ray.engines.collective import free_port

    ctx = mp.get_context("spawn")
    q, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_nccl_rank, args=(r, port, model_dir, q)) for r in (0, 1)]
    for p in procs:
        p.start()
    out = {}
    try:
        for _ in procs:
            r, v = q.get(timeout=120)
            out[f"rank{r}"] = v
    except Exception as exc:
        out["error"] = f"timed out waiting for the ranks ({type(exc).__name__})"
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default="gpu_model")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--work", default="/tmp/cai_gpu_model")
    ap.add_argument("--only", default="peak,sft,reward,learner,engine,nccl")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"torch": torch.__version__,
                 "device": torch.cuda.get_device_name(0) if CUDA else "cpu (dry run)"}
    model_dir = make_model(Path(args.model_dir), Path(args.work))
    only = args.only.split(",")
    steps = {
        "peak": lambda: {"bf16_tflops": peak_tflops()},
        "sft": lambda: {"zero2": sft(model_dir, 2, args.steps, res["peak"]["bf16_tflops"]),
                        "zero3": sft(model_dir, 3, args.steps, res["peak"]["bf16_tflops"]),
                        "plain_loop": plain_loop(model_dir, args.steps)},
        "reward": lambda: {"zero2": sft(model_dir, 2, args.steps, res["peak"]["bf16_tflops"],
                                        task_name="reward")},
        "learner": lambda: learner(model_dir),
        "engine": lambda: engine(model_dir),
        "nccl": lambda: nccl(model_dir),
    }
    for name in only:
        t = time.time()
        try:
            res[name] = steps[name]()
        except Exception as exc:
            res[name] = {"error": f"{type(exc).__name__}: {str(exc)[:600]}"}
            traceback.print_exc()
        res[name]["seconds"] = round(time.time() - t, 1)
        log(name, json.dumps(res[name]))
        (out / "gpu_check.json").write_text(json.dumps(res, indent=1))
    if "sft" in res and "zero2" in res["sft"]:
        base = res["sft"]["plain_loop"]["tokens_per_s"]
        for z in ("zero2", "zero3"):
            res["sft"][z]["x_plain_loop"] = res["sft"][z]["tokens_per_s"] / base
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1))
    log(json.dumps(res, indent=1))
    import torch.distributed as dist

    if dist.is_initialized():  # a gloo/NCCL group left to interpreter exit can abort it
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
