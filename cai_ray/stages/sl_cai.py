"""Stage sl_cai: the supervised half of Constitutional AI (Bai et al. 2022, sec. 3).

For each red-team prompt the policy answers; then, for N rounds, it critiques its latest answer
against a principle drawn at random from the constitution and revises it. Each prompt moves to its
next step as soon as its previous step returns (no barrier between rounds), across M engine actors.

Output in RUN_DIR/sl_cai/:
    data/ + data.jsonl        one row per red-team prompt: initial answer, rounds, final answer
    helpful/ + helpful.jsonl  answers to helpful prompts (the helpful mix)
    sft/ + sft.jsonl          chat messages (prompt, final revision) mixed with helpful samples
    pairs/ + pairs.jsonl      prompt, chosen = final revision, rejected = initial answer
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field

from cai_ray.constitution import CritiqueExample
from cai_ray.generation import TOO_LONG, Request, Sampling
from cai_ray.prompts import templates as T
from cai_ray.prompts.sources import Prompt, normalise
from cai_ray.rundir.files import ProgressLog, save_dataset
from cai_ray.stages.base import Stage
from cai_ray.stages.context import Context, model_label
from cai_ray.stages.registry import register_stage
from cai_ray.stages.resources import engine_need


def check(job, constitution, base: str) -> None:
    """Load-time checks, before anything starts: the constitution has what this stage uses."""
    constitution.require("critique_revision", job.constitution.path)


def reads(job) -> tuple[str, ...]:
    """The artifacts this stage needs (cai_ray/stages/graph.py)."""
    return ()


@dataclass
class Chain:
    """One prompt's way through answer -> (critique -> revision) x N."""

    prompt: Prompt
    kind: str  # red_team | helpful
    rounds: int
    fewshot: list[CritiqueExample]
    turns: list[T.Turn] = field(default_factory=list)
    initial: str | None = None
    critique_req: Request | None = None
    requests: list[dict] = field(default_factory=list)

    @property
    def conversation(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt.prompt}]

    def latest(self) -> str:
        return self.turns[-1].revision if self.turns and self.turns[-1].revision else self.initial


def flags_for(initial: str, rounds: list[dict], shown: list[str] = ()) -> list[str]:
    """Why a revision should not be trained on: empty, an echo of the request, unchanged, a copy
    of a few-shot example it was shown, or a restatement of its own critique (small models do
    both)."""
    if not rounds:
        return []
    final, req = rounds[-1]["revision"], rounds[-1]["revision_request"]
    out = []
    if not final.strip():
        out.append("empty")
    elif _similar(final, req) or _similar(final, rounds[-1]["critique_request"]):
        out.append("echo")
    if final.strip() and normalise(final) == normalise(initial):
        out.append("unchanged")
    if final.strip() and any(_similar(final, s, 0.8) for s in shown):
        out.append("copied_fewshot")
    if final.strip() and _similar(final, rounds[-1].get("critique", ""), 0.8):
        out.append("restates_critique")
    return out


def _similar(a: str, b: str, threshold: float = 0.85) -> bool:
    a, b = normalise(a), normalise(b)
    if not a or not b:
        return False
    return a == b or (a.startswith(b) and len(a) < 1.2 * len(b)) or \
        difflib.SequenceMatcher(None, a, b).ratio() >= threshold


class SlCaiRunner:
    """The stage's driver loop over a pool; separate from `run` so tests can drive it."""

    def __init__(self, ctx: Context, pool, progress: ProgressLog, helpful_log: ProgressLog):
        self.ctx, self.cfg, self.pool = ctx, ctx.job.sl_cai, pool
        self.log, self.helpful_log = progress, helpful_log
        self.form = self.cfg.prompt_form
        self.model = model_label(ctx.base_model)
        self.counts = {"skipped_context": 0, "retried_without_fewshot": 0}

    def chain(self, p: Prompt, kind: str) -> Chain:
        shots = self.ctx.constitution.fewshot_critiques(self.ctx.job.seed, p.id,
                                                        self.cfg.num_fewshot)
        return Chain(p, kind, self.cfg.num_rounds if kind == "red_team" else 0, shots)

    def run(self, chains: list[Chain]) -> dict:
        sampling = Sampling(max_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                            top_p=self.cfg.top_p, seed=self.ctx.job.seed, stop=T.stops(self.form))
        e = self.ctx.job.engine
        sched = self.pool.scheduler(sampling, e.batch_size, e.max_in_flight)
        by_id = {c.prompt.id: c for c in chains}
        for c in chains:
            sched.put((c.prompt.id, "answer", 0), T.answer_request(self.form, c.prompt.id,
                                                                    c.conversation))
        bar = self.ctx.progress(len(chains), "sl_cai")
        t0 = time.time()
        for (pid, step, r), outs in sched.results():
            nxt = self.advance(by_id[pid], step, r, outs[0])
            if nxt is None:
                bar.update(1)
            else:
                sched.put((pid, *nxt[:2]), nxt[2])
        bar.close()
        return {**sched.stats, "seconds": time.time() - t0}

    def advance(self, c: Chain, step: str, r: int, out) -> tuple[str, int, Request] | None:
        """Record one finished step; return the next (step, round, request) or None when done."""
        pid = c.prompt.id
        if out.finish_reason == TOO_LONG:
            if step == "critique" and c.fewshot:  # the few-shot prefix made it too long
                self.counts["retried_without_fewshot"] += 1
                c.fewshot = []
                return "critique", r, self._critique(c, r)
            self.counts["skipped_context"] += 1
            self._finish(c, skipped=step)
            return None
        text = out.text.strip()
        if step == "answer":
            c.initial = text
            if c.rounds == 0:
                self._finish(c)
                return None
            return "critique", 0, self._critique(c, 0)
        if step == "critique":
            c.turns[r].critique = text
            return "revision", r, T.revision_request(self.form, pid, c.critique_req, c.turns[r])
        c.turns[r].revision = text
        if r + 1 < c.rounds:
            return "critique", r + 1, self._critique(c, r + 1)
        self._finish(c)
        return None

    def _critique(self, c: Chain, r: int) -> Request:
        principle = self.ctx.constitution.sample_critiques(self.ctx.job.seed,
                                                           f"{c.prompt.id}/round{r}")[0]
        if len(c.turns) == r:
            c.turns.append(T.Turn(principle))
        answer = c.initial if r == 0 else c.turns[r - 1].revision
        c.critique_req = T.critique_request(self.form, c.prompt.id, c.conversation, answer,
                                            c.turns[r], c.fewshot)
        return c.critique_req

    def _finish(self, c: Chain, skipped: str | None = None) -> None:
        rounds = [{"principle_id": t.principle.id, "critique_request": t.principle.critique,
                   "critique": t.critique or "", "revision_request": t.principle.revision,
                   "revision": t.revision or ""} for t in c.turns if t.revision is not None]
        row = {"id": c.prompt.id, "source": c.prompt.source, "category": c.prompt.category,
               "parents": c.prompt.parents,
               "kind": c.kind, "prompt": c.prompt.prompt, "initial": c.initial or "",
               "rounds": rounds, "final": rounds[-1]["revision"] if rounds else (c.initial or ""),
               "flags": flags_for(c.initial or "", rounds, [t for ex in c.fewshot for t in
                                                            (ex.revision, ex.critique)])
               if not skipped else [f"skipped:{skipped}"],
               "model": self.model, "constitution": self.ctx.constitution.name,
               "constitution_digest": self.ctx.constitution.digest(), "seed": self.ctx.job.seed,
               "prompt_form": self.form, "fewshot": len(c.fewshot)}
        (self.log if c.kind == "red_team" else self.helpful_log).add(row)


def sft_view(red: list[dict], helpful: list[dict], ratio: float, drop_flagged: bool,
             seed: int) -> list[dict]:
    """Chat rows (prompt, final revision), plus round(ratio * len) helpful rows (prompt, answer)."""
    import random

    keep = [r for r in red if not (drop_flagged and r["flags"])]
    rows = [{"id": r["id"], "kind": "red_team", "messages": [
        {"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["final"]}]}
        for r in keep]
    usable = [h for h in helpful if h["initial"].strip() and not h["flags"]]
    k = min(len(usable), round(ratio * len(keep)))
    for h in random.Random(seed).sample(usable, k):
        rows.append({"id": h["id"], "kind": "helpful", "messages": [
            {"role": "user", "content": h["prompt"]},
            {"role": "assistant", "content": h["initial"]}]})
    random.Random(seed + 1).shuffle(rows)
    return rows


def pair_view(red: list[dict], drop_flagged: bool) -> list[dict]:
    return [{"id": r["id"], "prompt": r["prompt"], "chosen": r["final"], "rejected": r["initial"],
             "messages_chosen": [{"role": "user", "content": r["prompt"]},
                                 {"role": "assistant", "content": r["final"]}],
             "messages_rejected": [{"role": "user", "content": r["prompt"]},
                                   {"role": "assistant", "content": r["initial"]}]}
            for r in red if not (drop_flagged and r["flags"])]


def run(ctx: Context) -> dict:
    cfg = ctx.job.sl_cai
    ctx.constitution.require("critique_revision", ctx.job.constitution.path)
    out = ctx.run.stage_dir("sl_cai")
    log = ProgressLog(out / "progress.jsonl")
    helpful_log = ProgressLog(out / "helpful_progress.jsonl")
    red = ctx.train_prompts(ctx.red_team.prompts)
    helpful = ctx.train_prompts(ctx.helpful.prompts) if cfg.helpful_ratio > 0 else []
    todo = [(p, "red_team") for p in red if p.id not in log] + \
           [(p, "helpful") for p in helpful if p.id not in helpful_log]
    stats: dict = {"seconds": 0.0, "generated_tokens": 0, "requests": 0}
    pool = None
    expanded = []
    try:
        if todo or cfg.expand_prompts:
            pool = ctx.engine_pool(ctx.base_model, name="sl_cai")
        if cfg.expand_prompts:
            from cai_ray.prompts.expand import expand

            expanded = expand(pool, red, cfg.expand_prompts, cfg.expand_fewshot, ctx.job.seed,
                              ctx.job.engine.batch_size, model_label(ctx.base_model))
            todo += [(p, "red_team") for p in expanded if p.id not in log]
        runner = SlCaiRunner(ctx, pool, log, helpful_log)
        if todo:
            stats = runner.run([runner.chain(p, kind) for p, kind in todo])
    finally:
        if pool is not None:
            pool.shutdown()
        log.close()
        helpful_log.close()
    wanted = {p.id for p in red} | {p.id for p in expanded}
    red_rows = [r for r in log.rows.values() if r["id"] in wanted or
                r["source"].startswith("expanded:")]
    kept = [r for r in red_rows if not any(f.startswith("skipped:") for f in r["flags"])]
    help_rows = [r for r in helpful_log.rows.values() if not r["flags"]]
    save_dataset(out / "data", kept)
    save_dataset(out / "helpful", help_rows)
    sft = sft_view(kept, help_rows, cfg.helpful_ratio, cfg.drop_flagged, ctx.job.seed)
    pairs = pair_view(kept, cfg.drop_flagged)
    save_dataset(out / "sft", sft)
    save_dataset(out / "pairs", pairs)
    flag_counts = {f: sum(f in r["flags"] for r in kept)
                   for f in ("empty", "echo", "unchanged", "copied_fewshot",
                             "restates_critique")}
    secs = stats["seconds"] or 1e-9
    return {
        "prompts": len(kept), "helpful": len(help_rows), "expanded": len(expanded),
        "skipped_context": len(red_rows) - len(kept),
        "processed_now": len(todo), "resumed": len(red_rows) + len(help_rows) - len(todo),
        "flagged": flag_counts, "dropped_flagged": sum(bool(r["flags"]) for r in kept)
        if cfg.drop_flagged else 0,
        "sft_rows": len(sft), "pair_rows": len(pairs), "rounds": cfg.num_rounds,
        "throughput/prompts_per_s": len(todo) / secs,
        "throughput/generated_tokens_per_s": stats["generated_tokens"] / secs,
        "generated_tokens": stats["generated_tokens"], "requests": stats["requests"],
        "actor_failures": stats.get("actor_failures", 0), "timing/generate_s": stats["seconds"],
        "hung_actors": stats.get("hung_actors", 0),
        "progress_repeats": log.repeats + helpful_log.repeats,
        "prompt_counts": dict(ctx.red_team.counts),
    }


STAGE = register_stage(Stage(
    name="sl_cai",
    about=("the model answers red-team prompts, critiques and revises its answers against "
           "principles drawn from the constitution (N rounds)"),
    run=run, sections=("model", "constitution", "prompts", "sl_cai", "seed"),
    reads=reads, produces=("sft_data", "pairs"),
    outputs=("sl_cai/data.jsonl", "sl_cai/sft.jsonl", "sl_cai/pairs.jsonl"),
    needs=lambda job: engine_need(job.engine),
    key_figures=("prompts", "sft_rows", "throughput/prompts_per_s"),
    check=check))
