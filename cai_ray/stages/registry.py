"""The stages of the method, in the order data flows through them: name -> module.

Adding a stage is one module in cai_ray/stages/ (SECTIONS, PRODUCES, reads(job), run(ctx), and
optionally KEY_FIGURES) plus one line here. The order is a topological order of the stage graph:
a stage reads only what stages before it produce (cai_ray/stages/graph.py). This module imports
nothing, so the job file's validation can use it.
"""

STAGES: dict[str, str] = {
    "sl_cai": "cai_ray.stages.sl_cai",
    "sft": "cai_ray.stages.sft",
    "preferences": "cai_ray.stages.preferences",
    "reward": "cai_ray.stages.reward",
    "dpo": "cai_ray.stages.dpo",
    "rl": "cai_ray.stages.rl",
    "eval": "cai_ray.stages.eval",
}

DEFAULT_STAGES = ("sl_cai", "sft", "preferences", "reward", "rl", "eval")
"""What a job runs when it names no stages: the paper's pipeline (RL-CAI). The `dpo` job file
runs sl_cai, sft, preferences, dpo, eval instead."""

ALIASES = {"ppo": "rl"}
"""Old stage names that still work on the command line and in job files."""
