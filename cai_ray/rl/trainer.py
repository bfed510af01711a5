"""The PPO driver (RL-CAI, Bai et al. 2022 sec. 4): rollouts stream from vLLM engine actors into
experience making (reference log-probs, reward, critic values) as they finish; the learner group
trains; the new weights go back to the engines.

    trainer = PpoTrainer(cfg, roles, pool, prompts, out_dir)
    trainer.run()

In async mode the next batch is generated while the learner trains on this one; every rollout
carries the policy version that produced it and the learner refuses rollouts more than
`max_staleness` versions old.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from cai_ray.algos.advantages import (AdaptiveKLController, FixedKLController, gae,
                                      penalised_rewards, whiten)
from cai_ray.engines.base import Request, Sampling
from cai_ray.rl.collective import free_port
from cai_ray.rl.experience import Experience, Rollout, pad_responses
from cai_ray.rl.learner import PpoLearner
from cai_ray.rl.roles import ReferencePolicy, RewardRole
from cai_ray.rl.weight_sync import make_sync

log = logging.getLogger(__name__)
LearnerActor = ray.remote(PpoLearner)
ReferenceActor = ray.remote(ReferencePolicy)
RewardActor = ray.remote(RewardRole)


@dataclass
class Roles:
    policy: str       # starting policy weights (SFT model, or a PPO checkpoint on resume)
    reference: str    # frozen SFT model
    critic: str       # critic initialisation (reward model, or a checkpoint)
    reward_model: str | None
    tokenizer: str


class LearnerGroup:
    """N learner actors as one data-parallel group; rank 0 answers for the group."""

    def __init__(self, roles: Roles, cfg: dict, seed: int, colocate_with=None):
        """colocate_with: an EnginePool built with room for one learner rank per bundle."""
        from cai_ray.platform import has_cuda, num_cores

        n = cfg["num_workers"]
        port = free_port()  # not a seeded choice: two runs on one machine would collide
        cfg = dict(cfg, threads=None if has_cuda() else max(1, num_cores() // n))
        self.actors = [LearnerActor.options(**self._placement(r, cfg, colocate_with))
                       .remote(roles.policy, roles.critic, cfg, rank=r, world=n,
                               master_port=port, seed=seed) for r in range(n)]
        ready, _ = ray.wait([a.get_version.remote() for a in self.actors], num_returns=n,
                            timeout=600)
        if len(ready) < n:
            raise RuntimeError(f"PPO learner: {n - len(ready)} of {n} learner rank(s) could not be "
                               f"placed or started in 600 s (each needs 1 CPU"
                               f"{' and a GPU' if cfg['use_gpu'] else ''}); the cluster has "
                               f"{ray.available_resources()} free. Give Ray more CPUs "
                               f"(ray.num_cpus) or use fewer engine actors / learner ranks")
        ray.get(ready)

    @staticmethod
    def _placement(rank: int, cfg: dict, pool) -> dict:
        if pool is None:
            return {"num_cpus": 1, "num_gpus": 1 if cfg["use_gpu"] else 0}
        gpus = pool.bundle.get("GPU", 0) / 2 if cfg["use_gpu"] else 0  # the engine has the rest
        return {"num_cpus": 1, "num_gpus": gpus, "scheduling_strategy": pool.bundle_strategy(rank)}

    def all(self, method: str, *args):
        return [getattr(a, method).remote(*args) for a in self.actors]

    def train(self, exp: Experience, **kw) -> list:
        n = len(self.actors)
        per = len(exp) // n
        return [a.train.remote(exp.select(list(range(r * per, (r + 1) * per))), **kw)
                for r, a in enumerate(self.actors)]


class PpoTrainer:
    def __init__(self, cfg, roles: Roles, pool, prompts: list, out_dir: Path, *, seed: int = 0,
                 reward_fn: str | None = None, quiet: bool = True):
        self.cfg, self.roles, self.pool, self.seed = cfg, roles, pool, seed
        self.prompts, self.out = prompts, Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        d = cfg.model_dump()
        self.learners = LearnerGroup(roles, d, seed, colocate_with=pool if cfg.colocate else None)
        near = {"scheduling_strategy": pool.bundle_strategy(0)} if cfg.colocate else {}
        self.ref = ReferenceActor.options(num_cpus=0, **near).remote(roles.reference)
        self.reward = RewardActor.options(num_cpus=0, **near).remote(
            roles.reward_model, reward_fn, cfg.max_new_tokens)
        self.sync = make_sync(cfg.weight_sync, pool)
        self.kl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
                   if cfg.kl_target else FixedKLController(cfg.kl_coef))
        self.version = 0
        self.quiet = quiet
        self.history: list[dict] = []

    # -- one batch of rollouts -----------------------------------------------------------------
    def _batch_prompts(self, it: int) -> list:
        order = list(range(len(self.prompts)))
        random.Random(self.seed).shuffle(order)
        k = self.cfg.prompts_per_iter
        return [self.prompts[order[(it * k + j) % len(order)]] for j in range(k)]

    def collect(self, it: int) -> tuple[list[Rollout], list, dict]:
        """Generate rollouts for iteration `it`; as each batch of them returns, start its scoring
        (reference, reward, critic) without waiting for the rest."""
        cfg = self.cfg
        t0 = time.time()
        sampling = Sampling(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            n=cfg.samples_per_prompt, seed=self.seed * 100_003 + it, logprobs=True)
        # one batch per engine: each engine's rollouts go to scoring as soon as they return
        # (splitting further only shrinks the engines' batches: decode cost per step is flat)
        per_engine = -(-cfg.prompts_per_iter // max(1, len(self.pool)))
        sched = self.pool.scheduler(sampling, batch_size=per_engine, max_in_flight=1)
        by_id = {}
        for p in self._batch_prompts(it):
            by_id[p.id] = p
            sched.put(p.id, Request(p.id, messages=[{"role": "user", "content": p.prompt}]))
        rollouts, pending, chunk = [], [], []
        for pid, comps in sched.results():
            for c in comps:
                chunk.append((Rollout(pid, by_id[pid].prompt, c.prompt_token_ids, c.token_ids,
                                      c.text, self.version, c.finish_reason), c.logprobs or []))
            if len(chunk) >= cfg.samples_per_prompt * per_engine:
                pending.append(self._score(chunk))
                rollouts += [r for r, _ in chunk]
                chunk = []
        if chunk:
            pending.append(self._score(chunk))
            rollouts += [r for r, _ in chunk]
        return rollouts, pending, {"timing/generate_s": time.time() - t0,
                                   "generated_tokens": sched.stats["generated_tokens"],
                                   "actor_failures": sched.stats["actor_failures"]}

    def _score(self, chunk):
        rolls = [r for r, _ in chunk]
        resp, mask = pad_responses([r.response_ids for r in rolls])
        old = torch.zeros_like(mask)
        for i, (_, lps) in enumerate(chunk):
            old[i, :len(lps)] = torch.tensor(lps, dtype=torch.float32)
        prompt_ids = [r.prompt_ids for r in rolls]
        return {"rollouts": rolls, "resp": resp, "mask": mask, "old_logp": old,
                "ref": self.ref.logprobs.remote(prompt_ids, resp, mask),
                "reward": self.reward.score.remote([r.prompt for r in rolls],
                                                   [r.response for r in rolls],
                                                   [len(r.response_ids) for r in rolls]),
                "values": self.learners.all("logprobs_values", prompt_ids, resp, mask)[0]}

    def make_experience(self, pending: list) -> tuple[Experience, dict]:
        t0 = time.time()
        parts = []
        for p in pending:
            _, values = ray.get(p["values"])
            parts.append((p, ray.get(p["ref"]), torch.tensor(ray.get(p["reward"])), values))
        width = max(p["resp"].shape[1] for p, *_ in parts)

        def cat(xs):
            return torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in xs])

        rolls = [r for p, *_ in parts for r in p["rollouts"]]
        exp = Experience([r.prompt_ids for r in rolls], cat([p["resp"] for p, *_ in parts]),
                         cat([p["mask"] for p, *_ in parts]), cat([p["old_logp"] for p, *_ in parts]),
                         cat([ref for _, ref, _, _ in parts]), cat([v for *_, v in parts]),
                         torch.cat([s for _, _, s, _ in parts]),
                         versions=[r.policy_version for r in rolls])
        return exp, {"timing/score_s": time.time() - t0}

    def advantages(self, exp: Experience) -> dict:
        cfg = self.cfg
        exp.rewards, kl = penalised_rewards(exp.score, exp.old_logp, exp.ref_logp, exp.mask,
                                            self.kl.value)
        adv, exp.returns = gae(exp.rewards, exp.values, exp.mask, cfg.gamma, cfg.lam)
        exp.advantages = whiten(adv, exp.mask) if cfg.whiten_advantages else adv
        seq_kl = (kl * exp.mask).sum(-1)
        return {"reward/mean": float(exp.score.mean()), "reward/std": float(exp.score.std()),
                "kl/mean": float(seq_kl.mean()), "kl/coef": self.kl.value,
                "response/length": float(exp.mask.sum(-1).mean())}

    def refuse_stale(self, exp: Experience) -> tuple[Experience, int]:
        """Drop rollouts whose policy version is more than max_staleness behind the learner."""
        keep = [i for i, v in enumerate(exp.versions) if self.version - v <= self.cfg.max_staleness]
        n = len(self.learners.actors)
        keep = keep[:len(keep) - len(keep) % n] if len(keep) >= n else keep
        return (exp.select(keep) if len(keep) < len(exp) else exp), len(exp) - len(keep)

    # -- the loop ------------------------------------------------------------------------------
    def train_on(self, exp: Experience, it: int) -> list:
        mb = min(self.cfg.micro_batch_size, max(1, len(exp) // len(self.learners.actors)))
        return self.learners.train(exp, epochs=self.cfg.ppo_epochs, minibatch=mb,
                                   clip=self.cfg.clip, value_clip=self.cfg.value_clip,
                                   seed=self.seed + it)

    def run(self, start: int = 0, on_iteration=None) -> list[dict]:
        cfg = self.cfg
        nxt = self.collect(start)
        for it in range(start, cfg.iterations):
            t_it = time.time()
            rollouts, pending, gen = nxt
            exp, score = self.make_experience(pending)
            exp, stale = self.refuse_stale(exp)
            stats = self.advantages(exp)
            t_train = time.time()
            train_refs = self.train_on(exp, it)
            overlapped = 0.0
            if cfg.async_mode and it + 1 < cfg.iterations:
                nxt = self.collect(it + 1)  # generates while the learner trains
                overlapped = nxt[2]["timing/generate_s"]
            metrics = ray.get(train_refs)[0]
            train_s = time.time() - t_train
            self.version += 1
            sync = self.sync.push(self.learners)
            if not cfg.async_mode and it + 1 < cfg.iterations:
                nxt = self.collect(it + 1)
            row = {"iteration": it + 1, "policy_version": self.version, **stats, **metrics,
                   **gen, **score, "timing/train_s": train_s - overlapped,
                   "timing/overlapped_generate_s": overlapped, **sync,
                   "timing/iteration_s": time.time() - t_it, "rollouts": len(exp),
                   "stale_refused": stale,
                   "perf/tokens_per_s": gen["generated_tokens"] / max(gen["timing/generate_s"],
                                                                      1e-9)}
            self.kl.update(stats["kl/mean"], len(exp))
            self.history.append(row)
            if on_iteration:
                on_iteration(self, row)
        return self.history

    def save(self, folder: Path) -> None:
        ray.get(self.learners.all("save", str(folder), self.roles.tokenizer))
        (folder / "trainer_state.json").write_text(json.dumps(
            {"iteration": len(self.history) and self.history[-1]["iteration"],
             "version": self.version, "kl_coef": self.kl.value}))
