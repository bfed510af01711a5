"""The stages of the method, one module each, in the order data flows through them:

    sl_cai       the model critiques and revises its own answers (Bai et al. 2022 sec. 3)
    sft          fine-tune the policy on the revisions
    preferences  the AI judge labels pairs of the policy's answers (sec. 4.1)
    reward       a preference model learns the labels
    dpo          or: the policy learns the labels directly (no reward model, no RL)
    rl           the policy is trained by RL against the reward (sec. 4)
    eval         refusals, over-refusal and judge Elo for every policy of the run

Each module ends in register_stage(Stage(..., after=...)) (base.py): the order comes from the
declarations, not from the imports below. registry.py keeps them, graph.py says who provides each
input, resources.py what the cluster must hold, context.py is what a stage receives.
"""

from cai_ray.stages import dpo, eval, preferences, reward, rl, sft, sl_cai  # noqa: F401
