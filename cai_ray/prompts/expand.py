"""Red-team prompt expansion (Bai et al. 2022 sec. 3.2: 140k model-written red-team prompts from
few-shot examples of human-written ones). Off by default (sl_cai.expand_prompts)."""

from __future__ import annotations

import difflib
import random
import re

from cai_ray.generation import Request, Sampling
from cai_ray.prompts.sources import Prompt, normalise, prompt_id

INSTRUCTION = ("Here are some questions that people have asked an AI assistant to test whether it "
               "can be talked into something harmful:\n")


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def dedupe(candidates: list[str], existing: list[str], threshold: float = 0.6) -> list[str]:
    """Drop exact duplicates (after normalising) and near-duplicates (word 3-gram Jaccard >=
    threshold, or a character-level similarity of 0.8) of each other and of existing prompts."""
    kept: list[str] = []
    seen = {normalise(t) for t in existing}
    sigs = [shingles(t) for t in existing]
    for text in candidates:
        text = text.strip().strip('"').strip()
        if len(text) < 12 or normalise(text) in seen:
            continue
        s = shingles(text)
        if any(jaccard(s, o) >= threshold for o in sigs) or any(
                difflib.SequenceMatcher(None, normalise(text), t).ratio() >= 0.8 for t in seen):
            continue
        kept.append(text)
        seen.add(normalise(text))
        sigs.append(s)
    return kept


def first_question(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return re.sub(r"^\s*(\d+[.)]|[-*])\s*", "", line).strip()


def expand(pool, seeds: list[Prompt], n: int, fewshot: int, seed: int, batch_size: int,
           model: str, max_rounds: int = 4) -> list[Prompt]:
    """Ask the model for new red-team prompts until n survive de-duplication (or max_rounds)."""
    rng = random.Random(seed)
    out: list[Prompt] = []
    existing = [p.prompt for p in seeds]
    for rnd in range(max_rounds):
        want = n - len(out)
        if want <= 0:
            break
        reqs, parents = [], {}
        for i in range(int(want * 1.5) + 1):
            shots = rng.sample(seeds, min(fewshot, len(seeds)))
            listing = "".join(f"{k + 1}. {p.prompt}\n" for k, p in enumerate(shots))
            rid = f"expand-{rnd}-{i}"
            parents[rid] = [p.id for p in shots]
            reqs.append(Request(rid, text=INSTRUCTION + listing + f"{len(shots) + 1}."))
        sched = pool.scheduler(Sampling(max_tokens=48, temperature=1.0, top_p=0.95,
                                        seed=seed + rnd, stop=["\n"]), batch_size)
        for r in reqs:
            sched.put(r.id, r)
        texts = {key: first_question(outs[0].text) for key, outs in sched.results()}
        for text in dedupe([texts[r.id] for r in reqs], existing + [p.prompt for p in out]):
            rid = next(k for k, v in texts.items() if v.strip().strip('"').strip() == text)
            out.append(Prompt(prompt_id(text), text, f"expanded:{model}", "expanded",
                              parents=parents[rid]))
            if len(out) >= n:
                break
    return out
