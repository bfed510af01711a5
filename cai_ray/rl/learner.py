"""The PPO learner: policy and critic, each a DeepSpeed ZeRO engine, as a plain class.

A Ray actor (LearnerActor) wraps it; a LearnerGroup runs N of them as one data-parallel group
(gloo on CPU, NCCL on GPU), each on its shard of every batch.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from cai_ray.algos.advantages import entropy_from_logits, masked_mean, ppo_policy_loss, value_loss
from cai_ray.algos.losses import token_logprobs
from cai_ray.platform import init_deepspeed_comm
from cai_ray.rl.experience import Experience, gather_response, join_sequences


def _ds_config(cfg: dict, lr: float) -> dict:
    zero = {"stage": cfg["zero_stage"]}
    out = {"train_micro_batch_size_per_gpu": cfg["micro_batch_size"],
           "gradient_accumulation_steps": 1, "gradient_clipping": cfg["grad_clip"],
           "zero_optimization": zero, "steps_per_print": 10 ** 9}
    if cfg["precision"] == "bf16":
        out["bf16"] = {"enabled": True}
    return out


class PpoLearner:
    def __init__(self, policy_path: str, critic_path: str, cfg: dict, *, rank: int = 0,
                 world: int = 1, master_port: int = 29511, seed: int = 0):
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cai_ray.train.reward import load_value_model

        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port),
                           "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0"})
        if cfg.get("threads"):
            torch.set_num_threads(cfg["threads"])
        torch.manual_seed(seed)
        init_deepspeed_comm(cfg["use_gpu"])
        self.cfg, self.rank, self.world, self.version = cfg, rank, world, 0
        tok = AutoTokenizer.from_pretrained(policy_path)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32,
                                                      use_safetensors=True)
        critic = load_value_model(critic_path)
        self.tied = bool(getattr(policy.config, "tie_word_embeddings", False))
        self.actor = self._engine(policy, cfg["lr"])
        self.critic = self._engine(critic, cfg["critic_lr"])

    def _engine(self, model, lr: float):
        import deepspeed

        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.cfg["weight_decay"])
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=opt,
                                          config=_ds_config(self.cfg, lr))
        return engine

    # -- experience making ---------------------------------------------------------------------
    def _forward(self, prompt_ids, response, mask):
        ids, att, plens = join_sequences(prompt_ids, [r[:int(m.sum())].tolist() for r, m in
                                                      zip(response, mask)], self.pad_id)
        dev = self.actor.device
        logits = self.actor(input_ids=ids.to(dev), attention_mask=att.to(dev)).logits
        logits = gather_response(logits, plens.to(dev), response.shape[1])  # (B, T, V)
        logp = token_logprobs(logits, response.to(dev)) * mask.to(dev)
        return logits, logp, (ids, att, plens)

    def _values(self, ids, att, plens, width):
        from cai_ray.train.reward import token_values

        dev = self.critic.device
        v = token_values(self.critic.module, ids.to(dev), att.to(dev))  # (B, L)
        return gather_response(v, plens.to(dev), width)  # (B, T)

    @torch.no_grad()
    def logprobs_values(self, prompt_ids: list[list[int]], response, mask):
        """Policy log-probs and critic values of given rollouts: two (B, T) tensors."""
        self.actor.eval()
        self.critic.eval()
        _, logp, (ids, att, plens) = self._forward(prompt_ids, response, mask)
        values = self._values(ids, att, plens, response.shape[1]) * mask.to(self.critic.device)
        return logp.cpu(), values.cpu()

    # -- training ------------------------------------------------------------------------------
    def train(self, exp: Experience, epochs: int, minibatch: int, clip: float,
              value_clip: float, seed: int = 0) -> dict:
        """PPO epochs over minibatches of this rank's shard; returns mean metrics."""
        self.actor.train()
        self.critic.train()
        g = torch.Generator().manual_seed(seed)
        sums: dict[str, float] = {}
        n = 0
        for _ in range(epochs):
            order = torch.randperm(len(exp), generator=g).tolist()
            for k in range(0, len(order) - minibatch + 1, minibatch):
                mb = exp.select(order[k:k + minibatch])
                for key, v in self._step(mb, clip, value_clip).items():
                    sums[key] = sums.get(key, 0.0) + v
                n += 1
        self.version += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    def _step(self, mb: Experience, clip: float, value_clip: float) -> dict:
        dev = self.actor.device
        mask = mb.mask.to(dev)
        logits, logp, (ids, att, plens) = self._forward(mb.prompt_ids, mb.response, mb.mask)
        pl, m = ppo_policy_loss(logp, mb.old_logp.to(dev), mb.advantages.to(dev), mask, clip)
        ent = entropy_from_logits(logits.detach(), mask)
        self.actor.backward(pl)
        self.actor.step()
        values = self._values(ids, att, plens, mb.response.shape[1])
        vl, vm = value_loss(values, mb.values.to(values.device), mb.returns.to(values.device),
                            mb.mask.to(values.device), value_clip)
        self.critic.backward(vl)
        self.critic.step()
        return {"ppo/policy_loss": float(pl.detach()), "ppo/value_loss": float(vl.detach()),
                "ppo/entropy": float(ent), **m, **vm,
                "ppo/values_mean": float(masked_mean(values.detach(), mb.mask.to(values.device)))}

    # -- weights -------------------------------------------------------------------------------
    def policy_state(self) -> dict:
        """The full policy state dict on the CPU (gathered under ZeRO-3), without the tied head."""
        with self._gathered() as state:
            return {k: v.detach().cpu().clone() for k, v in state.items()}

    @contextmanager
    def _gathered(self):
        """The policy's state dict, live on its device, valid inside the block (under ZeRO-3 every
        rank must enter: the parameters are gathered collectively)."""
        import deepspeed

        module = self.actor.module
        params = list(module.parameters())
        zero3 = getattr(params[0], "ds_id", None) is not None
        with (deepspeed.zero.GatheredParameters(params, modifier_rank=None) if zero3
              else nullcontext()):
            state = dict(module.state_dict())
            if self.tied:
                state.pop("lm_head.weight", None)
            yield state

    # -- weight sync over a collective group (ppo.weight_sync = nccl | gloo) -------------------
    def sync_meta(self) -> list:
        from cai_ray.rl.collective import tensor_meta

        with self._gathered() as state:
            return tensor_meta(state)

    def sync_address(self, loopback: bool) -> tuple[str, int]:
        """Where rank 0 will host the broadcast group's store: its address and a free port."""
        from cai_ray.rl.collective import free_port, own_address

        host = "127.0.0.1" if loopback else own_address()
        return host, free_port(host)

    def sync_join(self, host: str, port: int, world: int, backend: str) -> bool:
        """Rank 0 of the learner group is rank 0 (the source) of the broadcast group."""
        if self.rank == 0:
            from cai_ray.rl.collective import open_group

            self._sync_group = open_group(host, port, 0, world, backend)
        return True

    def sync_send(self, meta: list) -> int:
        """Broadcast the policy to the engines (every learner rank calls it; rank 0 sends)."""
        from cai_ray.rl.collective import send

        with self._gathered() as state:
            return send(self._sync_group, state, meta) if self.rank == 0 else 0

    def sync_leave(self) -> None:
        self._sync_group = None

    def state_bytes(self) -> bytes:
        from cai_ray.engines.base import state_dict_to_bytes

        return state_dict_to_bytes(self.policy_state())

    def save(self, folder: str, tokenizer_from: str | None = None) -> str:
        """save_pretrained of policy (folder/policy) and critic (folder/critic) on rank 0."""
        from cai_ray.train.core import copy_tokenizer, export_model

        export_model(self.actor, str(Path(folder) / "policy"))
        export_model(self.critic, str(Path(folder) / "critic"))
        if self.rank == 0 and tokenizer_from:
            for sub in ("policy", "critic"):
                copy_tokenizer(tokenizer_from, Path(folder) / sub)
        return folder

    def get_version(self) -> int:
        return self.version

    def set_version(self, v: int) -> None:
        self.version = v

    def peak_rss_mb(self) -> float:
        from cai_ray.platform import peak_rss_mb

        return peak_rss_mb()
