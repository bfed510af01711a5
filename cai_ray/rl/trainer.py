"""The RL driver (RL-CAI, Bai et al. 2022 sec. 4), for every algorithm of the registry: rollouts
stream from the vLLM engine actors into scoring (reward; reference log-probs when there is a KL
term; critic values when there is a critic; the learner's old log-probs when an iteration takes
several optimizer steps) as each engine's batch returns; the estimator turns scores into
advantages; the learner group trains; the new weights go back to the engines.

    trainer = RlTrainer(cfg, roles, pool, prompts, seed=0, reward_params={...})
    trainer.run()

In async mode the next batch is generated while the learner trains on this one; every rollout
carries the policy version that produced it and rollouts more than `max_staleness` versions old
are refused.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from cai_ray.algos.advantages import ESTIMATORS, AdvantageInput, AdvantageParams
from cai_ray.algos.kl import AdaptiveKLController, FixedKLController, kl_estimate
from cai_ray.algos.policy_loss import mismatch
from cai_ray.algos.stats import group_stats
from cai_ray.generation import TOO_LONG, Request, Sampling
from cai_ray.platform import has_cuda, num_cores
from cai_ray.rewards import Scored
from cai_ray.rl.experience import Experience, Rollout, concat, pad_right
from cai_ray.rl.group import LearnerGroup
from cai_ray.rl.learner import step_plan
from cai_ray.rl.roles import ReferencePolicy, RewardWorker
from cai_ray.rl.spec import CriticSpec, LearnerSpec
from cai_ray.rl.weight_sync import make_sync
from cai_ray.rundir.nodeview import gather

log = logging.getLogger(__name__)
ReferenceActor = ray.remote(ReferencePolicy)
RewardActor = ray.remote(RewardWorker)


@dataclass
class Roles:
    policy: str            # starting policy weights (SFT model, or an RL checkpoint on resume)
    reference: str         # frozen SFT model
    critic: str | None     # critic initialisation (reward model, SFT, or a checkpoint); None: none
    tokenizer: str


class RlTrainer:
    def __init__(self, cfg, roles: Roles, pool, prompts: list, *, seed: int = 0,
                 reward_params: dict | None = None, quiet: bool = True,
                 weight_sync: str | None = None, plugins: tuple[str, ...] = ()):
        """cfg: the rl section (driver side); the learners, reference and reward roles get typed
        specs. weight_sync: the resolved path (JobConfig.weight_sync()); default
        cfg.weight_sync, with auto taken as object_store."""
        self.cfg, self.roles, self.pool, self.seed, self.quiet = cfg, roles, pool, seed, quiet
        self.spec = LearnerSpec.of(cfg, plugins)
        self.alg = alg = self.spec.algorithm
        self.prompts = prompts
        self.order = list(range(len(prompts)))
        random.Random(seed).shuffle(self.order)
        self.cursor = 0          # prompts drawn so far (group ids count them)
        self.resume_cursor = 0   # ... by the iterations finished: where a resumed run goes on
        self.timeout = cfg.call_timeout_s
        near = {"scheduling_strategy": pool.bundle_strategy(0)} if cfg.colocate else {}
        # with LoRA the learner always starts from the base (a resume restores the adapters from
        # the DeepSpeed state), and the engines merge each adapter into that same base
        self.learners = LearnerGroup(roles.reference if cfg.lora else roles.policy,
                                     roles.critic if alg.needs_critic else None,
                                     self.spec, seed,
                                     colocate_with=pool if cfg.colocate else None)
        # the frozen roles take no CPU of their own (they work while the learner waits), but use
        # every core when they do: Ray would give a num_cpus=0 actor one OpenMP thread
        threads = None if has_cuda() else num_cores()
        self.ref = (ReferenceActor.options(num_cpus=0, **near).remote(
            roles.reference, threads=threads, chunk=cfg.logprob_chunk,
            share_prompts=cfg.share_prompts, precision=self.spec.train.precision)
            if alg.needs_reference else None)
        self.reward = RewardActor.options(num_cpus=0, **near).remote(
            cfg.reward, {"max_tokens": cfg.max_new_tokens, **(reward_params or {})}, threads,
            plugins)
        kind = weight_sync or cfg.weight_sync
        self.sync = make_sync("object_store" if kind == "auto" else kind, pool,
                              cfg.weight_sync_bucket_mb,
                              lora_base=roles.reference if cfg.lora else None)
        self.kl = (AdaptiveKLController(alg.kl_coef, cfg.kl_target, cfg.kl_horizon)
                   if cfg.kl_target else FixedKLController(alg.kl_coef))
        # several optimizer steps per iteration: the old log-probs must be computed before the
        # first one (one step on fresh rollouts gets them free from its own forward pass)
        rollouts = cfg.prompts_per_iter * cfg.samples_per_prompt
        self.recompute_old = cfg.rollout_correction != "none" and (
            cfg.update_epochs > 1 or (cfg.mini_batch_size or rollouts) < rollouts)
        self.version = 0
        self.history: list[dict] = []

    # -- rollouts --------------------------------------------------------------------------------
    def _draw(self, k: int) -> list[tuple[int, object]]:
        """The next k prompts of the shuffled cycle, each with its group id."""
        out = []
        for _ in range(k):
            out.append((self.cursor, self.prompts[self.order[self.cursor % len(self.order)]]))
            self.cursor += 1
        return out

    def collect(self, it: int, k: int | None = None, attempt: int = 0):
        """Generate the rollouts of k prompts (default: prompts_per_iter); each engine's batch
        goes to scoring as soon as it returns. Returns (pending scoring, generation stats)."""
        cfg = self.cfg
        t0 = time.time()
        drawn = self._draw(k or cfg.prompts_per_iter)
        sampling = Sampling(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, n=cfg.samples_per_prompt,
                            seed=self.seed * 100_003 + it * 101 + attempt, logprobs=True)
        # one batch per engine (splitting further only shrinks the engines' batches)
        per_engine = -(-len(drawn) // max(1, len(self.pool)))
        sched = self.pool.scheduler(sampling, batch_size=per_engine, max_in_flight=1)
        by_group = {}
        for g, p in drawn:
            by_group[g] = p
            sched.put(g, Request(str(g), messages=[{"role": "user", "content": p.prompt}]))
        pending, chunk, too_long = [], [], 0
        for g, comps in sched.results():
            if comps[0].finish_reason == TOO_LONG:
                too_long += 1
                continue
            p = by_group[g]
            chunk += [Rollout(p.id, p.prompt, c.prompt_token_ids, c.token_ids, c.text,
                              self.version, g, c.logprobs or [], c.finish_reason) for c in comps]
            if len(chunk) >= cfg.samples_per_prompt * per_engine:
                pending.append(self._score(chunk))
                chunk = []
        if chunk:
            pending.append(self._score(chunk))
        return pending, {"timing/generate_s": time.time() - t0,
                         "generated_tokens": sched.stats["generated_tokens"],
                         "actor_failures": sched.stats["actor_failures"],
                         "prompts_too_long": too_long}

    def _score(self, rolls: list[Rollout]) -> dict:
        """Start every scoring call for one batch of rollouts; returns the refs."""
        resp, mask = pad_right([r.response_ids for r in rolls])
        sampler, _ = pad_right([r.sampler_logp for r in rolls], 0.0, torch.float32)
        sampler = sampler[:, :resp.shape[1]] if sampler.shape[1] >= resp.shape[1] else \
            torch.nn.functional.pad(sampler, (0, resp.shape[1] - sampler.shape[1]))
        prompt_ids = [r.prompt_ids for r in rolls]
        batch = [Scored(r.prompt_id, r.prompt, r.response, len(r.response_ids)) for r in rolls]
        return {"rollouts": rolls, "resp": resp, "mask": mask, "sampler": sampler * mask,
                "reward": self.reward.score.remote(batch),
                "ref": self.ref.logprobs.remote(prompt_ids, resp, mask) if self.ref else None,
                "values": (self.learners.forward("values", prompt_ids, resp, mask)
                           if self.alg.needs_critic else None),
                "old": (self.learners.forward("logprobs", prompt_ids, resp, mask)
                        if self.recompute_old else None)}

    def _get(self, ref, what: str):
        if ref is None:
            return None
        try:
            return ray.get(ref, timeout=self.timeout)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"RL: the {what} call gave no answer in {self.timeout:.0f} s "
                               f"(rl.call_timeout_s); a role is hung") from None

    def make_experience(self, pending: list) -> Experience:
        parts = []
        for p in pending:
            rolls = p["rollouts"]
            parts.append(Experience(
                [r.prompt_ids for r in rolls], p["resp"], p["mask"], p["sampler"],
                torch.tensor(self._get(p["reward"], "reward"), dtype=torch.float32),
                torch.tensor([r.group for r in rolls]), [r.policy_version for r in rolls],
                old_logp=self._get(p["old"], "learner logprobs"),
                ref_logp=self._get(p["ref"], "reference"),
                values=self._get(p["values"], "critic values")))
        return concat(parts)

    def gather(self, it: int, first) -> tuple[Experience | None, dict]:
        """This iteration's experience: the first collection's, and with dynamic sampling, groups
        whose rewards all agree dropped and refilled from the next prompts."""
        pending, gen = first
        t0 = time.time()
        exp = self.make_experience(pending) if pending else None
        stats = dict(gen)
        if self.alg.dynamic_sampling:
            exp, dropped = informative(exp)
            refills = 0
            while refills < self.cfg.max_refills and groups(exp) < self.cfg.prompts_per_iter:
                refills += 1
                more, g = self.collect(it, self.cfg.prompts_per_iter - groups(exp), refills)
                stats["timing/generate_s"] += g["timing/generate_s"]
                stats["generated_tokens"] += g["generated_tokens"]
                extra, d = informative(self.make_experience(more) if more else None)
                dropped += d
                exp = extra if exp is None else (exp if extra is None else concat([exp, extra]))
            stats.update({"dynamic/groups_dropped": dropped, "dynamic/refills": refills})
        stats["timing/score_s"] = time.time() - t0
        return exp, stats

    # -- the algorithm -------------------------------------------------------------------------
    def advantages(self, exp: Experience) -> dict:
        """Fill exp.advantages (and returns) with the algorithm's estimator; the batch's figures."""
        cfg, alg = self.cfg, self.alg
        policy_logp = exp.old_logp if exp.old_logp is not None else exp.sampler_logp
        seq_kl = None
        if exp.ref_logp is not None:  # logged whatever the KL's place: k1 summed per answer
            seq_kl = (kl_estimate(policy_logp, exp.ref_logp, "k1") * exp.mask).sum(-1)
        kl = None
        if alg.kl_in == "reward" and self.kl.value > 0:
            kl = kl_estimate(policy_logp, exp.ref_logp, alg.kl_estimator) * exp.mask
        crit = self.spec.critic or CriticSpec()
        exp.advantages, exp.returns = ESTIMATORS[alg.advantage].fn(
            AdvantageInput(exp.score, exp.mask, exp.group, kl, self.kl.value, exp.values),
            AdvantageParams(gamma=cfg.gamma, lam=crit.lam, whiten=crit.whiten_advantages))
        _, std, _ = group_stats(exp.score, exp.group)
        out = {"reward/mean": float(exp.score.mean()),
               "reward/std": float(exp.score.std()) if len(exp) > 1 else 0.0,
               "kl/mean": float(seq_kl.mean()) if seq_kl is not None else 0.0,
               "kl/coef": self.kl.value, "response/length": float(exp.mask.sum(-1).mean()),
               "groups/all_equal": float((std == 0).float().mean()),
               "advantage/abs_mean": float((exp.advantages.abs() * exp.mask).sum()
                                           / exp.mask.sum().clamp_min(1))}
        if exp.old_logp is not None:
            out.update(mismatch(exp.old_logp, exp.sampler_logp, exp.mask))
        return out

    def refuse_stale(self, exp: Experience) -> tuple[Experience, int]:
        """Drop rollouts whose policy version is more than max_staleness behind the learner."""
        keep = [i for i, v in enumerate(exp.versions) if self.version - v <= self.cfg.max_staleness]
        return (exp.select(keep) if len(keep) < len(exp) else exp), len(exp) - len(keep)

    def train_on(self, exp: Experience, it: int) -> list:
        cfg = self.cfg
        lengths = [len(p) + int(m.sum()) for p, m in zip(exp.prompt_ids, exp.mask)]
        plans = step_plan(lengths, exp.group.tolist(), len(self.learners), cfg.mini_batch_size,
                          cfg.micro_batch_size, cfg.update_epochs, seed=self.seed + it)
        return self.learners.train(exp, plans)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, start: int = 0, on_iteration=None) -> list[dict]:
        cfg = self.cfg
        t_last = time.time()  # an iteration's wall time runs from the previous one's end
        nxt = self.collect(start)
        for it in range(start, cfg.iterations):
            exp, gen = self.gather(it, nxt)
            costs = self.judge_costs()  # before the next batch is scored
            self.resume_cursor = self.cursor  # before the next iteration draws its prompts
            stale = 0
            if exp is not None:
                exp, stale = self.refuse_stale(exp)
            stats = self.advantages(exp) if exp is not None and len(exp) else {}
            learn = exp if stats else None
            if learn is not None and self.alg.pairs_only:  # online DPO: each group's best, worst
                learn, stats["pairs/groups_without_pair"] = pairs_of(exp)
                stats["pairs/kept"] = 0 if learn is None else int(learn.group.unique().numel())
            t_train = time.time()
            train_refs = self.train_on(learn, it) if learn is not None else []
            overlapped = 0.0
            if cfg.async_mode and it + 1 < cfg.iterations:
                nxt = self.collect(it + 1)  # generates while the learner trains
                overlapped = nxt[1]["timing/generate_s"]
            metrics = self._get(train_refs[0], "learner train") if train_refs else {}
            for ref in train_refs[1:]:
                self._get(ref, "learner train")
            train_s = time.time() - t_train
            sync = {"timing/weight_sync_s": 0.0}
            if train_refs:
                self.version += 1
                sync = self.sync.push(self.learners)
            now = time.time()
            row_s, t_last = now - t_last, now
            if not cfg.async_mode and it + 1 < cfg.iterations:
                nxt = self.collect(it + 1)
            row = {"iteration": it + 1, "policy_version": self.version, "algorithm": self.alg.name,
                   **stats, **metrics, **gen, "timing/train_s": train_s - overlapped,
                   "timing/overlapped_generate_s": overlapped, **sync,
                   "timing/iteration_s": row_s,
                   "rollouts": len(exp) if exp is not None else 0, "stale_refused": stale,
                   "skipped_update": int(not train_refs),
                   "perf/tokens_per_s": gen["generated_tokens"] / max(gen["timing/generate_s"],
                                                                      1e-9)}
            row.update(costs)
            if stats:
                self.kl.update(stats["kl/mean"], len(exp))
            self.history.append(row)
            if on_iteration:
                on_iteration(self, row)
        return self.history

    def judge_costs(self) -> dict:
        """The judge reward's cost in judge calls so far (running totals), else {}."""
        if self.cfg.reward.split(":")[0] != "judge":
            return {}
        return {f"judge/{k}": v for k, v in
                self._get(self.reward.costs.remote(), "reward costs").items()}

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"iteration": self.history[-1]["iteration"] if self.history else 0,
                "version": self.version, "kl_coef": self.kl.value, "cursor": self.resume_cursor}

    def save(self, folder: Path) -> None:
        from cai_ray.rundir.files import write_json_atomic

        ray.get(self.learners.call("save", str(folder), self.roles.tokenizer),
                timeout=self.timeout)
        gather(folder)  # what learners on other nodes wrote, into the run directory's copy
        write_json_atomic(folder / "trainer_state.json", self.state())  # last: marks it complete

    def restore(self, folder: Path, state: dict) -> None:
        """Learner training state (optimizer included) and the driver's counters."""
        ray.get(self.learners.call("restore", str(folder)), timeout=self.timeout)
        self.version, self.kl.value = state["version"], state["kl_coef"]
        self.cursor = self.resume_cursor = state.get("cursor", state["iteration"] *
                                                     self.cfg.prompts_per_iter)

    def peak_memory_mb(self) -> dict:
        out = {"memory/learner_peak_mb": max(ray.get(self.learners.call("peak_rss_mb"),
                                                     timeout=self.timeout))}
        if self.ref is not None:
            out["memory/reference_peak_mb"] = ray.get(self.ref.peak_rss_mb.remote(),
                                                      timeout=self.timeout)
        out["memory/engine_peak_mb"] = max(i["peak_rss_mb"] for i in
                                           self.pool.call_all("info"))
        return out

    def shutdown(self) -> None:
        self.learners.shutdown()
        for a in (self.ref, self.reward):
            if a is not None:
                ray.kill(a, no_restart=True)


def pairs_of(exp: Experience) -> tuple[Experience | None, int]:
    """The rollouts with a nonzero advantage (the estimator's pair of each group), and how many
    groups had none (all their scores equal)."""
    keep = [i for i, a in enumerate(exp.advantages.abs().sum(-1).tolist()) if a > 0]
    with_pair = len(set(exp.group[keep].tolist())) if keep else 0
    return (exp.select(keep).trim() if keep else None), groups(exp) - with_pair


def groups(exp: Experience | None) -> int:
    return 0 if exp is None else len(set(exp.group.tolist()))


def informative(exp: Experience | None) -> tuple[Experience | None, int]:
    """DAPO's dynamic sampling: keep only groups whose rewards differ (a group of equal rewards has
    no advantage to learn from). Returns the rest and how many groups were dropped."""
    if exp is None:
        return None, 0
    _, std, _ = group_stats(exp.score, exp.group)
    keep = [i for i, s in enumerate(std.tolist()) if s > 0]
    dropped = groups(exp) - len(set(exp.group[keep].tolist())) if keep else groups(exp)
    return (exp.select(keep) if keep else None), dropped


def mean_of(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return sum(vals) / len(vals) if vals else math.nan
