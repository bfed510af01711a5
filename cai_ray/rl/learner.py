"""The RL learner: one rank holds the policy and, when the algorithm has a critic, the critic, each
a DeepSpeed engine from the shared worker base (train/dist.py). A plain class; LearnerGroup
(rl/group.py) runs N of them as Ray actors, one data-parallel group spanning nodes.

Each optimizer step is a list of micro-batches (a `plan` the driver made, the same shape on every
rank); gradients accumulate over them with every loss divided by the step's own token or answer
count, so the step's gradient is that of the aggregate over the whole step.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import torch

from cai_ray.algos.policy_loss import (
    POLICY_LOSSES,
    aggregate,
    aggregate_denominator,
    kl_loss,
    mismatch,
    tis_weights,
    value_loss,
)
from cai_ray.algos.stats import masked_mean
from cai_ray.rl.experience import Experience
from cai_ray.rl.forward import frozen_logprobs, rollout_logprobs, rollout_values
from cai_ray.rl.spec import LearnerSpec
from cai_ray.rundir.nodeview import node_dir, on_node, publish
from cai_ray.train import dist as D

Plan = list[list[list[int]]]
"""plan[step] = the micro-batches of one optimizer step, each a list of rollout indices (empty: this
rank has nothing for it, and runs a zero-weight pass so every rank calls the same collectives)."""


def step_plan(lengths: list[int], groups: list[int], world: int, mini: int | None, micro: int,
              epochs: int, seed: int = 0) -> list[Plan]:
    """plan[rank] for `epochs` passes over len(lengths) rollouts.

    The unit is a prompt's group of samples (they share the prompt's forward pass, rl/forward.py):
    each epoch shuffles the groups (in order when one step takes everything), cuts them into
    optimizer steps of about `mini` rollouts (all ranks together; None: all of them), deals a
    step's groups round-robin to the ranks, and packs each rank's share, sorted by length (less
    padding), into micro-batches of at most `micro` rollouts; a group larger than `micro` is split.
    Every rank gets the same number of steps and of micro-batches per step."""
    units: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        units.setdefault(g, []).append(i)
    order = list(units.values())
    gen = torch.Generator().manual_seed(seed)
    size = mini or len(lengths)
    plans: list[Plan] = [[] for _ in range(world)]
    for _ in range(epochs):
        if epochs > 1 or size < len(lengths):
            order = [order[i] for i in torch.randperm(len(order), generator=gen).tolist()]
        steps, cur = [], []
        for u in order:
            cur.append(u)
            if sum(map(len, cur)) >= size:
                steps.append(cur)
                cur = []
        steps += [cur] if cur else []
        for step in steps:
            shares = [_pack(sorted(step[r::world], key=lambda u: max(lengths[i] for i in u)), micro)
                      for r in range(world)]
            m = max(1, max(len(s) for s in shares))
            for r, share in enumerate(shares):
                plans[r].append(share + [[] for _ in range(m - len(share))])
    return plans


def _pack(units: list[list[int]], micro: int) -> list[list[int]]:
    """Whole groups into micro-batches of at most `micro` rollouts (a bigger group is split)."""
    out: list[list[int]] = []
    cur: list[int] = []
    for u in units:
        for k in range(0, len(u), micro):
            piece = u[k:k + micro]
            if cur and len(cur) + len(piece) > micro:
                out.append(cur)
                cur = []
            cur = cur + piece
    return out + ([cur] if cur else [])


class Learner:
    def __init__(self, policy_path: str, spec: LearnerSpec, *, critic_path: str | None = None,
                 rank: int = 0, world: int = 1, seed: int = 0):
        """spec: rl/spec.py LearnerSpec (the algorithm resolved, threads set by the group)."""
        from cai_ray.config.plugins import load_plugins

        load_plugins(list(spec.train.plugins))
        if spec.threads:
            torch.set_num_threads(spec.threads)
        D.limit_heap()
        torch.manual_seed(seed)
        self.spec, self.rank, self.world = spec, rank, world
        self.alg = spec.algorithm
        self.paths = (policy_path, critic_path)
        self.version, self.actor, self.critic = 0, None, None
        self._listener = None
        self._sync_group = None

    # -- forming the group ---------------------------------------------------------------------
    def listen(self) -> tuple[str, int]:
        """Rank 0: open the group's store on this node's own address; where to reach it."""
        host = D.node_address()
        self._listener = D.listen(host)
        return host, self._listener.getsockname()[1]

    def join(self, host: str, port: int) -> int:
        """Join the process group, then load the models into DeepSpeed engines."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cai_ray.models import trust_remote_code
        from cai_ray.train.reward import load_value_model

        spec = self.spec
        D.join_group(host, port, self.rank, self.world, spec.train.use_gpu, self._listener)
        policy_path, critic_path = (p and on_node(p) for p in self.paths)
        tok = AutoTokenizer.from_pretrained(policy_path, trust_remote_code=trust_remote_code())
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32,
                                                      use_safetensors=True,
                                                      trust_remote_code=trust_remote_code())
        self.tied = bool(getattr(policy.config, "tie_word_embeddings", False))
        from cai_ray.train import lora

        # with LoRA only the adapters train, and the engines get only them (AdapterSync)
        policy = lora.prepare(policy, spec.train, "CAUSAL_LM")
        self.actor = D.build_engine(policy, spec.train, spec.train.lr, self.world)
        if critic_path:
            self.critic = D.build_engine(load_value_model(critic_path), spec.train,
                                         spec.critic.lr, self.world)
        return self.rank

    # -- scoring rollouts before an update -----------------------------------------------------
    @torch.no_grad()
    def logprobs(self, prompt_ids: list[list[int]], response, mask):
        """The policy's log-probs of given rollouts (B, T): the iteration's old log-probs."""
        self.actor.eval()
        with D.compute(self.spec.train.precision, self.actor.device):
            return frozen_logprobs(self.actor, prompt_ids, response, mask, self.pad_id,
                                   self.spec.logprob_chunk, self.spec.share_prompts).cpu()

    @torch.no_grad()
    def values(self, prompt_ids: list[list[int]], response, mask):
        """The critic's values before each response token (B, T)."""
        self.critic.eval()
        with D.compute(self.spec.train.precision, self.critic.device):
            values = rollout_values(self.critic, prompt_ids, response, mask, self.pad_id,
                                    self.spec.share_prompts)
        return (values * mask.to(self.critic.device)).cpu()

    # -- training ------------------------------------------------------------------------------
    def train(self, exp: Experience, plan: Plan) -> dict:
        """Optimizer steps over this rank's share of the rollouts (plan: see step_plan)."""
        sums: dict[str, float] = defaultdict(float)
        weight = 0.0
        timing = defaultdict(float)
        t_all = time.time()
        self.actor.train()
        if self.critic is not None:
            self.critic.train()
        for s, step in enumerate(plan):
            parts = [exp.select(mb).trim() if mb else None for mb in step]
            real = [p for p in parts if p is not None]
            denom = sum(aggregate_denominator(p.mask, self.alg.loss_agg) for p in real)
            tokens = sum(float(p.mask.sum()) for p in real)
            for p in real:  # padded share of each micro-batch as prompt + answer rows
                lens = [len(x) for x in p.prompt_ids]
                timing["learner/padded"] += len(lens) * (max(lens) + p.mask.shape[1]) - (
                    sum(lens) + float(p.mask.sum()))
                timing["learner/positions"] += len(lens) * (max(lens) + p.mask.shape[1])
            for j, part in enumerate(parts):
                # a rank with no share of this micro-batch runs a zero-weight pass on a stand-in:
                # every rank must reach the same gradient reductions, with every parameter used
                mb, scale = (part, 1.0) if part is not None else (exp.select([0]).trim(), 0.0)
                last = j == len(parts) - 1
                m = self._policy_micro(mb, denom, last, first_step=s == 0, scale=scale,
                                       timing=timing)
                if self.critic is not None:
                    t = time.time()
                    m.update(self._critic_micro(mb, tokens, last, scale))
                    timing["learner/critic_s"] += time.time() - t
                w = float(mb.mask.sum()) * scale
                for k, v in m.items():
                    sums[k] += v * w
                weight += w
            t = time.time()
            self.actor.step()
            if self.critic is not None:
                self.critic.step()
            D.trim_heap()
            timing["learner/optimizer_s"] += time.time() - t
        self.version += 1
        timing["learner/train_s"] = time.time() - t_all
        timing["learner/pad_share"] = timing.pop("learner/padded") / max(
            timing.pop("learner/positions"), 1.0)
        return {**{k: v / max(weight, 1.0) for k, v in sums.items()}, **timing}

    def _policy_micro(self, mb: Experience, denom: float, boundary: bool, first_step: bool,
                      scale: float = 1.0, timing: dict | None = None) -> dict:
        spec, alg, dev = self.spec, self.alg, self.actor.device
        timing = {} if timing is None else timing
        t0 = time.time()
        with D.compute(spec.train.precision, dev):
            logp, ent = rollout_logprobs(self.actor, mb.prompt_ids, mb.response, mb.mask,
                                         self.pad_id, chunk=spec.logprob_chunk, entropy=True,
                                         entropy_grad=spec.entropy_coef > 0,
                                         share_prompts=spec.share_prompts)
        mask, adv, sampler = mb.mask.to(dev), mb.advantages.to(dev), mb.sampler_logp.to(dev)
        correction = spec.rollout_correction
        if correction == "none":
            old = sampler
        elif mb.old_logp is not None:
            old = mb.old_logp.to(dev)
        elif first_step:  # the iteration's first update runs at the weights that are "old"
            old = logp.detach()
        else:
            raise RuntimeError("learner: no old log-probs for an update after the first; the "
                               "driver recomputes them when an iteration takes several steps")
        weights = tis_weights(old, sampler, mask, spec.tis_cap) if correction == "tis" else None
        agg = dict(agg=alg.loss_agg, norm_len=spec.max_new_tokens, denom=denom)
        extra = {k: getattr(mb, k).to(dev) for k in alg.loss_needs}  # e.g. ref_logp, group
        loss, m = POLICY_LOSSES[alg.policy_loss](
            logp, old, adv, mask, clip_low=alg.clip_low, clip_high=alg.clip_high,
            dual_clip=alg.dual_clip, ratio_level=alg.ratio_level, weights=weights,
            beta=alg.beta, **extra, **agg)
        if alg.kl_in == "loss" and alg.kl_coef > 0:
            kl = kl_loss(logp, mb.ref_logp.to(dev), mask, alg.kl_estimator, **agg)
            loss = loss + alg.kl_coef * kl
            m["kl/loss_term"] = float(kl.detach()) * denom / max(aggregate_denominator(
                mask, alg.loss_agg), 1.0)
        if spec.entropy_coef:
            loss = loss - spec.entropy_coef * aggregate(ent, mask, **agg)
        m["policy/loss"] = float(loss.detach()) * denom / max(aggregate_denominator(
            mask, alg.loss_agg), 1.0)
        m["policy/entropy"] = float(masked_mean(ent.detach(), mask))
        if weights is not None:
            m["mismatch/is_weight_mean"] = float(masked_mean(weights, mask))
        if first_step:  # the learner's log-probs at the sampler's weights: their mismatch
            m.update(mismatch(logp.detach() if mb.old_logp is None else old, sampler, mask))
        t1 = time.time()
        self.actor.set_gradient_accumulation_boundary(boundary)
        self.actor.backward(loss * scale, scale_wrt_gas=False)
        timing["learner/forward_s"] = timing.get("learner/forward_s", 0.0) + t1 - t0
        timing["learner/backward_s"] = timing.get("learner/backward_s", 0.0) + time.time() - t1
        return m

    def _critic_micro(self, mb: Experience, tokens: float, boundary: bool,
                      scale: float = 1.0) -> dict:
        dev = self.critic.device
        mask = mb.mask.to(dev)
        with D.compute(self.spec.train.precision, dev):
            values = rollout_values(self.critic, mb.prompt_ids, mb.response, mb.mask,
                                    self.pad_id, self.spec.share_prompts)
        loss, m = value_loss(values, mb.values.to(dev), mb.returns.to(dev), mask,
                             self.spec.critic.value_clip, denom=tokens)
        self.critic.set_gradient_accumulation_boundary(boundary)
        self.critic.backward(loss * scale, scale_wrt_gas=False)
        return {**m, "critic/loss": float(loss.detach()) * tokens / max(float(mask.sum()), 1.0),
                "critic/values_mean": float(masked_mean(values.detach(), mask))}

    # -- weights out -----------------------------------------------------------------------------
    def adapter_payload(self) -> bytes | None:
        """The LoRA adapter as safetensors bytes (rank 0; every rank calls under ZeRO-3)."""
        from cai_ray.train import lora

        with D.gathered(self.actor.module):
            return lora.adapter_payload(self.actor.module) if self.rank == 0 else None

    def _policy_state(self) -> dict:
        from cai_ray.train import lora

        module = self.actor.module
        if lora.is_peft(module):  # the full-weight paths get the merged weights
            module = lora.merged_copy(module)
        state = dict(module.state_dict())
        if self.tied:
            state.pop("lm_head.weight", None)
        return state

    def weight_meta(self) -> list:
        from cai_ray.engines.collective import tensor_meta

        with D.gathered(self.actor.module):
            return tensor_meta(self._policy_state())

    def weight_buckets(self, meta: list, bucket_mb: float):
        """Stream the policy as safetensors files of at most bucket_mb each (a Ray streaming
        generator: each bucket reaches the object store before the next one is packed, so the
        learner never holds a second copy of the whole model). Under ZeRO-3 every rank calls it
        (the gather is collective); rank 0 yields."""
        from safetensors.torch import save

        from cai_ray.engines.collective import buckets

        with D.gathered(self.actor.module):
            if self.rank != 0:
                return
            state = self._policy_state()
            for _, idx in buckets(meta, bucket_mb):
                yield save({meta[i][0]: state[meta[i][0]].detach().cpu().contiguous()
                            for i in idx})

    def sync_join(self, host: str, port: int, world: int, backend: str) -> bool:
        """Rank 0 of the learner group is rank 0 (the source) of the weight broadcast group."""
        if self.rank == 0:
            from cai_ray.engines.collective import open_group

            self._sync_group = open_group(host, port, 0, world, backend, listener=self._sync_sock)
        return True

    def sync_address(self, loopback: bool) -> tuple[str, int]:
        """Where rank 0 hosts the broadcast group's store: this node's address, a free port."""
        host = "127.0.0.1" if loopback else D.node_address()
        self._sync_sock = D.listen(host)
        return host, self._sync_sock.getsockname()[1]

    def sync_send(self, meta: list, bucket_mb: float) -> int:
        """Broadcast the policy to the engines, bucket by bucket (every rank calls; rank 0
        sends)."""
        from cai_ray.engines.collective import drop_on_failure, send

        with D.gathered(self.actor.module):
            if self.rank != 0:
                return 0
            state = self._policy_state()
            return drop_on_failure(self, "_sync_group",
                                   lambda group: send(group, state, meta, bucket_mb))

    def sync_leave(self) -> None:
        self._sync_group = None

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, folder: str, tokenizer_from: str | None = None) -> str:
        """folder/policy (save_pretrained: engines, resume, later stages), folder/critic, and
        folder/state_* (DeepSpeed: weights, optimizer, step) for an exact resume. A rank on
        another node than the driver's writes its part on its node and publishes it."""
        shared, folder = folder, Path(node_dir(folder))
        D.export_model(self.actor, folder / "policy")
        D.save_state(self.actor, folder / "state_policy", "policy", {"version": self.version})
        if self.critic is not None:
            D.export_model(self.critic, folder / "critic")
            D.save_state(self.critic, folder / "state_critic", "critic")
        if self.rank == 0 and tokenizer_from:
            for sub in ("policy", "critic") if self.critic is not None else ("policy",):
                D.copy_tokenizer(on_node(tokenizer_from), folder / sub)
        D.barrier()
        publish(shared, replaces_siblings=True)  # on another node: to storage; older ones go
        return str(shared)

    def restore(self, folder: str) -> int:
        """Training state from a checkpoint save() wrote: optimizer moments included."""
        folder = Path(on_node(folder))
        client = D.load_state(self.actor, folder / "state_policy", "policy")
        if self.critic is not None:
            D.load_state(self.critic, folder / "state_critic", "critic")
        self.version = int(client.get("version", self.version))
        return self.version

    def get_version(self) -> int:
        return self.version

    def set_version(self, v: int) -> None:
        self.version = v

    def peak_rss_mb(self) -> float:
        from cai_ray.platform import peak_rss_mb

        return peak_rss_mb()

    def ping(self) -> bool:
        return True
