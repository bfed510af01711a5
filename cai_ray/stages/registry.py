"""The stages of the method by name, in the order data flows through them. A stage is one module
that ends in register_stage(Stage(...)) (stages/base.py); the built-in ones are imported by
cai_ray/stages/__init__.py, a plugin's by the job's `plugins:`.

    registry.get("sft").run(ctx);  registry.names();  registry.canonical(["rl", "sft"])
"""

from __future__ import annotations

import logging

from cai_ray.config.legacy import STAGE_ALIASES
from cai_ray.errors import InputError
from cai_ray.stages.base import Stage

STAGES: dict[str, Stage] = {}
"""Every stage, in the order data flows (rebuilt at each registration from Stage.after)."""
_declared: dict[str, Stage] = {}
log = logging.getLogger("cai_ray")


def register_stage(stage: Stage) -> Stage:
    """Add (or replace) a stage: right after stage.after (after those already placed there),
    or last when it names none; the order does not depend on the order of registration."""
    _declared.pop(stage.name, None)
    _declared[stage.name] = stage
    placed = [n for n, st in _declared.items() if st.after is None]
    pending = [n for n, st in _declared.items() if st.after is not None]
    while pending:
        ready = [n for n in pending if _declared[n].after in placed]
        if not ready:  # after a stage nobody registered: last, in registration order
            placed += pending
            break
        for n in ready:
            at = placed.index(_declared[n].after) + 1
            while at < len(placed) and _declared[placed[at]].after == _declared[n].after:
                at += 1
            placed.insert(at, n)
            pending.remove(n)
    STAGES.clear()
    STAGES.update((n, _declared[n]) for n in placed)
    return stage


def get(name: str) -> Stage:
    return STAGES[name]


def names() -> list[str]:
    return list(STAGES)


def canonical(requested: list[str], where: str = "--stages") -> list[str]:
    """Stage names in the order data flows; old names (ppo) taken as their new ones. Unknown
    names and repeats are refused (InputError naming `where`); names given in another order run
    in this one, with a warning saying so."""
    given = [STAGE_ALIASES.get(s, s) for s in requested]
    bad = [s for s in given if s not in STAGES]
    if bad:
        raise InputError(f"{where} {','.join(requested)}: unknown stage(s) {bad}; choose from "
                         f"{', '.join(STAGES)}")
    twice = sorted({s for s in given if given.count(s) > 1})
    if twice:
        raise InputError(f"{where} {','.join(requested)}: {', '.join(twice)} named more than "
                         f"once; name each stage once")
    ordered = [s for s in STAGES if s in given]
    if ordered != given:
        log.warning("%s %s: stages run in the order data flows: %s", where, ",".join(requested),
                    ",".join(ordered))
    return ordered


def markdown_table(job) -> str:
    """The stages as a Markdown table (the README's, kept equal to this by a test): what each
    does, reads under `job`, and produces."""
    rows = ["| stage | what it does | reads | makes |", "|---|---|---|---|"]
    for st in STAGES.values():
        reads = ", ".join(st.reads(job)) or "prompts, constitution"
        rows.append(f"| `{st.name}` | {st.about} | {reads} | {', '.join(st.produces)} |")
    return "\n".join(rows)
