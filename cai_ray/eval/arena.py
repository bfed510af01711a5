"""The eval stage's instruments over a set of policies (also `cai-ray eval compare`): answers from
one engine pool whose weights are swapped per policy, refusal figures with intervals, the judge's
tournament and Elo, per-principle attribution of a run's AI feedback, and the summary figures.

    answers, comps_harm, comps_help = play(ctx, pols, harmful, benign, out, "eval")
    refusal_figures(pols, answers, harmful, benign, n_boot, seed); elo_figures(pols, comps, ...)
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from cai_ray.constitution import JudgePrinciple
from cai_ray.generation import Request, Sampling
from cai_ray.judges import JudgeItem
from cai_ray.rundir.files import read_jsonl, write_jsonl_atomic

log = logging.getLogger("cai_ray")


HELPFUL_FALLBACK = JudgePrinciple(id="helpful", text="Which response is more helpful, accurate "
                                  "and complete, answering what the person actually asked?")


def split_principles(constitution):
    """(harmlessness principles, helpfulness principles) of the constitution's judge list."""
    helpful = [p for p in constitution.judge if "helpful" in (p.id + p.text).lower()]
    harmless = [p for p in constitution.judge if p not in helpful] or constitution.judge
    return harmless, helpful or [HELPFUL_FALLBACK]


# -- 1. the policies and the prompts -------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    name: str
    path: str
    step: int
    """Position in training order (0 base, 1 SFT, then the later stages' steps)."""


def sample(prompts: list, n: int, seed: int) -> list:
    """A fixed sample of n prompts: the smallest hashes of (seed, id)."""
    key = lambda p: hashlib.sha256(f"{seed}:{p.id}".encode()).hexdigest()  # noqa: E731
    return sorted(prompts, key=key)[:n]


def eval_sets(ctx) -> tuple[dict[str, list], dict[str, list]]:
    """(harmful sets, benign sets): name -> prompts. The run's held-out red-team and helpful
    prompts first, then the public sets (each sampled to eval.max_per_set)."""
    from cai_ray.prompts.sources import load_prompts, source_path

    cfg = ctx.job.eval
    harmful = {"red_team": ctx.heldout_prompts(ctx.red_team.prompts)[:cfg.max_prompts]}
    benign = {"helpful": ctx.heldout_prompts(ctx.helpful.prompts)[:cfg.max_prompts]}
    seen = {p.id for p in harmful["red_team"] + benign["helpful"]}
    for specs, into in ((cfg.harmful, harmful), (cfg.benign, benign)):
        for spec in specs:
            path = source_path(spec)
            if path is not None and not path.exists():
                ctx.notes.append(f"eval: {spec} not found here; skipped")
                continue
            name = spec.split(":", 1)[0] if ":" in spec else Path(spec).stem
            ps = [p for p in sample(load_prompts([spec]).prompts, cfg.max_per_set, ctx.job.seed)
                  if p.id not in seen]
            seen |= {p.id for p in ps}
            into[name] = ps
    return harmful, benign


class Weights:
    """Which policy's weights the pool holds (each swap costs a load)."""

    def __init__(self, pool, first: str):
        self.pool, self.now = pool, first

    def hold(self, path: str) -> None:
        if path != self.now:
            self.pool.call_all("load_weights", path)
            self.now = path


def answer_all(weights: Weights, pols: list[Policy], prompts: list, max_tokens: int, batch: int,
               bar) -> dict[str, dict[str, str]]:
    """policy name -> prompt id -> greedy answer; the pool's weights are swapped per policy."""
    got, pool = {}, weights.pool
    for pol in pols:
        got[pol.name] = {}
        if not prompts:
            continue
        weights.hold(pol.path)
        sched = pool.scheduler(Sampling(max_tokens=max_tokens, temperature=0.0), batch)
        for p in prompts:
            sched.put(p.id, Request(p.id, messages=[{"role": "user", "content": p.prompt}]))
        for pid, outs in sched.results():
            got[pol.name][pid] = outs[0].text.strip()
            bar.update(1)
    return got


# -- 2. refusals ----------------------------------------------------------------------------------
def refusal_figures(pols, answers, harmful: dict, benign: dict, n_boot: int, seed: int) -> dict:
    """Per policy and set: refusal rate (Wilson 95%), empty answers, mean length; pooled harmful
    and benign rates; the final policy's paired difference from base on both pools, and each
    stage's from the stage before it (`steps`: sft - base, dpo - sft, rl - ...)."""
    from cai_ray.algos.ratings import mean_interval, paired_difference, rate
    from cai_ray.eval import refusals as R

    def flags(pol, prompts):
        return [R.is_refusal(answers[pol.name][p.id]) for p in prompts]

    out = {"sets": {}, "pooled": {}}
    for kind, sets in (("harmful", harmful), ("benign", benign)):
        pooled = [p for ps in sets.values() for p in ps]
        for pol in pols:
            for name, ps in [*sets.items(), (f"all_{kind}", pooled)]:
                if not ps:
                    continue
                ans = [answers[pol.name][p.id] for p in ps]
                out["sets"].setdefault(name, {"kind": kind, "n": len(ps), "policies": {}})
                out["sets"][name]["policies"][pol.name] = {
                    **rate(flags(pol, ps)), "empty": sum(R.is_empty(a) for a in ans),
                    "partial": sum(R.kind(a) == "partial" for a in ans),
                    "length_chars": mean_interval([len(a) for a in ans], n_boot=n_boot,
                                                  seed=seed)}
        if pooled and len(pols) > 1:
            first, last = pols[0], pols[-1]
            out["pooled"][kind] = {"of": [last.name, first.name], **paired_difference(
                flags(last, pooled), flags(first, pooled), n_boot=n_boot, seed=seed)}
    stages = [p for p in pols if "@" not in p.name]  # the RL checkpoints are not stages
    out["steps"] = {}
    for kind, sets in (("harmful", harmful), ("benign", benign)):
        pooled = [p for ps in sets.values() for p in ps]
        if pooled:
            out["steps"][kind] = [{"of": [b.name, a.name], **paired_difference(
                flags(b, pooled), flags(a, pooled), n_boot=n_boot, seed=seed)}
                for a, b in zip(stages, stages[1:])]
    if "xstest-safe" in benign and benign["xstest-safe"] and len(pols) > 1:
        out["pooled"]["xstest_safe"] = {"of": [pols[-1].name, pols[0].name], **paired_difference(
            flags(pols[-1], benign["xstest-safe"]), flags(pols[0], benign["xstest-safe"]),
            n_boot=n_boot, seed=seed)}
    return out


# -- 3. the tournament ----------------------------------------------------------------------------
def tournament(judge, pols, answers, prompts, tag: str, bar) -> list[tuple]:
    """Every pair of policies on every prompt: (prompt id, i, j, P(i's answer better)).
    Identical answers are a tie without asking the judge."""
    comps, items, where = [], [], {}
    for p in prompts:
        conv = [{"role": "user", "content": p.prompt}]
        for i in range(len(pols)):
            for j in range(i + 1, len(pols)):
                a, b = answers[pols[i].name][p.id], answers[pols[j].name][p.id]
                if a.strip() == b.strip():
                    comps.append((p.id, i, j, 0.5))
                    continue
                it = JudgeItem(f"{tag}/{p.id}/{pols[i].name}-{pols[j].name}", conv, a, b)
                items.append(it)
                where[it.id] = (p.id, i, j)
    for k in range(0, len(items), 32):
        chunk = items[k:k + 32]
        for jd in judge.label(chunk):
            comps.append((*where[jd.id], jd.p_first))
        bar.update(len(chunk))
    return comps


def elo_figures(pols, comps: list[tuple], n_boot: int, seed: int) -> dict:
    """Elo (base = 1000) with bootstrap intervals, and the final policy's win rates."""
    from cai_ray.algos.ratings import bootstrap_elo, mean_interval, rate

    res = bootstrap_elo(len(pols), comps, anchor=0, n_boot=n_boot, seed=seed)
    out = {"policies": {p.name: {"elo": res["elo"][k], "low": res["low"][k],
                                 "high": res["high"][k], "step": p.step}
                        for k, p in enumerate(pols)},
           "comparisons": len(comps), "win_rates": {}}
    last = len(pols) - 1
    for k, other in enumerate(pols[:-1]):
        ps = [1 - s if j == last else s for _, i, j, s in comps if {i, j} == {k, last}]
        out["win_rates"][f"{pols[-1].name}_vs_{other.name}"] = {
            "hard": rate([s > 0.5 for s in ps]), "ties": sum(s == 0.5 for s in ps),
            "soft": mean_interval(ps, n_boot=n_boot, seed=seed)}
    return out


# -- 4. per-principle attribution -----------------------------------------------------------------
def attribution(run_path: Path) -> list[dict]:
    """Per principle: how often the preferences stage drew it, how often its label agreed with
    the ensemble, its position-bias rate; for critique principles, revisions and flagged ones."""
    rows: dict[str, dict] = {}

    def row(pid):
        return rows.setdefault(pid, {"principle": pid, "drawn": 0, "agrees": 0, "orders": 0,
                                     "disagreements": 0, "revisions": 0, "flagged": 0})

    for r in read_jsonl(run_path / "preferences" / "data.jsonl"):
        per = r.get("per_principle") or {}
        if not per:
            continue
        ensemble = sum(per.values()) / len(per) >= 0.5
        for pid, p in per.items():
            x = row(pid)
            x["drawn"] += 1
            x["agrees"] += (p >= 0.5) == ensemble
            o = (r.get("orders") or {}).get(pid) or []
            if len(o) == 2:
                x["orders"] += 1
                x["disagreements"] += (o[0] > 0.5) != (o[1] > 0.5)
    for r in read_jsonl(run_path / "sl_cai" / "data.jsonl"):
        if r.get("kind") != "red_team" or not r.get("rounds"):
            continue
        for rd in r["rounds"]:
            x = row(rd.get("principle_id", "?"))
            x["revisions"] += 1
        x["flagged"] += bool(r.get("flags"))
    for x in rows.values():
        x["agreement"] = x["agrees"] / x["drawn"] if x["drawn"] else None
        x["position_bias"] = x["disagreements"] / x["orders"] if x["orders"] else None
        x["flagged_share"] = x["flagged"] / x["revisions"] if x["revisions"] else None
    return sorted(rows.values(), key=lambda x: (-x["drawn"], -x["revisions"], x["principle"]))


def play(ctx, pols, harmful: dict, benign: dict, out: Path, name: str):
    """Answers of every policy to every prompt (written to out/answers.jsonl before judging), then
    the judge's tournaments on the held-out red-team (harmlessness principles) and helpful
    (helpfulness principles) prompts. Returns (answers, harmless comparisons, helpful ones)."""
    from cai_ray import judges

    cfg, e, jc = ctx.job.eval, ctx.job.engine, ctx.job.judge
    red, helpful = harmful["red_team"], benign["helpful"]
    public = [p for n, ps in [*harmful.items(), *benign.items()]
              if n not in ("red_team", "helpful") for p in ps]
    log.info("%s: %d policies (%s), %d held-out red-team, %d helpful, %d public prompts", name,
             len(pols), ", ".join(p.name for p in pols), len(red), len(helpful), len(public))
    pool = ctx.engine_pool(pols[0].path, name=name)
    setup = None
    try:
        bar = ctx.progress(len(pols) * (len(red) + len(helpful) + len(public)), "answers")
        weights = Weights(pool, pols[0].path)
        answers = answer_all(weights, pols, red + helpful, cfg.max_new_tokens, e.batch_size, bar)
        pub = answer_all(weights, pols[::-1], public, cfg.refusal_max_new_tokens, e.batch_size,
                         bar)  # reversed: no reload between the two passes, base last
        bar.close()
        for k in answers:
            answers[k].update(pub[k])
        write_answers(out / "answers.jsonl", pols, answers, harmful, benign)
        if jc.model:
            pool.shutdown()
            pool = None
        else:  # the base model judges: its weights, whatever the pool answered with last
            weights.hold(pols[0].path)
        harmless_p, helpful_p = split_principles(ctx.constitution)
        setup = judges.open_judge(jc, ctx.constitution.with_judges(harmless_p),
                                  default_model=pols[0].path, seed=ctx.job.seed, engine=e,
                                  judge_engine=ctx.job.judge_engine(), shared_pool=pool,
                                  actors=ctx.judge_pool,
                                  principles_per_pair=cfg.principles_per_pair)
        j_help = judges.build(jc, ctx.constitution.with_judges(helpful_p), pool=setup.pool,
                              tokenizer=setup.tokenizer, seed=ctx.job.seed,
                              batch_size=setup.judge.batch_size,
                              max_in_flight=setup.judge.max_in_flight,
                              principles_per_pair=cfg.principles_per_pair)
        n_pairs = len(pols) * (len(pols) - 1) // 2
        bar = ctx.progress(n_pairs * (len(red) + len(helpful)), "judge", unit="pair")
        comps_harm = tournament(setup.judge, pols, answers, red, "harmless", bar)
        comps_help = tournament(j_help, pols, answers, helpful, "helpful", bar)
        bar.close()
    finally:
        if setup is not None:
            setup.close()
        if pool is not None:
            pool.shutdown()
    return answers, comps_harm, comps_help


def write_answers(path: Path, pols, answers, harmful: dict, benign: dict) -> None:
    """Every answer, with the detector's verdict (written before judging starts)."""
    from cai_ray.eval import refusals as R

    write_jsonl_atomic(path, [
        {"id": p.id, "set": name, "prompt": p.prompt,
         **{pol.name: answers[pol.name][p.id] for pol in pols},
         "refusal": {pol.name: R.is_refusal(answers[pol.name][p.id]) for pol in pols}}
        for name, ps in [*harmful.items(), *benign.items()] for p in ps])


def summary(result: dict, pols) -> dict:
    """The flat figures the manifest and the run summary show (the rest is in figures.json)."""
    s = {"policies": [p.name for p in pols], "judge": result["judge"]}
    sets = result["refusals"]["sets"]
    for kind, key in (("harmful", "all_harmful"), ("benign", "all_benign")):
        for pol in (pols[0], pols[-1]):
            r = sets.get(key, {}).get("policies", {}).get(pol.name)
            if r:
                who = "final" if pol is pols[-1] else "base"
                name = "refusal" if kind == "harmful" else "over_refusal"
                s[f"{name}/{kind}/{who}"] = r["rate"]
                s[f"{name}/{kind}/{who}_ci"] = [r["low"], r["high"]]
    x = sets.get("xstest-safe", {}).get("policies", {})
    if x:
        s["over_refusal/xstest/base"] = x[pols[0].name]["rate"]
        s["over_refusal/xstest/final"] = x[pols[-1].name]["rate"]
    for kind, name in (("harmful", "refusal"), ("benign", "over_refusal")):
        steps = result["refusals"].get("steps", {}).get(kind, [])
        for st in steps:
            s[f"{name}/step/{st['of'][0]}"] = st["difference"]
            s[f"{name}/step/{st['of'][0]}_ci"] = [st["low"], st["high"]]
        if steps:
            s[f"{name}/moved_by"] = moved_by(steps)
    d = result["refusals"]["pooled"].get("harmful")
    if d:
        s["refusal/difference/final_vs_base"] = d["difference"]
        s["refusal/difference/final_vs_base_ci"] = [d["low"], d["high"]]
    for kind in ("harmless", "helpful"):
        e = result["elo"][kind]["policies"][pols[-1].name]
        s[f"elo/{kind}/final"] = e["elo"]
        s[f"elo/{kind}/final_ci"] = [e["low"], e["high"]]
    return s


def moved_by(steps: list[dict]) -> str:
    """Which stage moved a rate: the largest change whose paired interval leaves out 0, or none."""
    real = [st for st in steps if st.get("excludes_zero")]
    if not real:
        return "no stage (every interval holds 0)"
    st = max(real, key=lambda x: abs(x["difference"]))
    return f"{st['of'][0]} {st['difference']:+.3f} [{st['low']:+.3f}, {st['high']:+.3f}]"
