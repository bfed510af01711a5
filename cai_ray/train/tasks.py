"""Task registry for the training core (kept apart so Ray workers import only what they run)."""


def make_task(name: str, kwargs: dict):
    if name == "sft":
        from cai_ray.train.sft import SftTask

        return SftTask(**kwargs)
    if name == "reward":
        from cai_ray.train.reward import RewardTask

        return RewardTask(**kwargs)
    if name == "dpo":
        from cai_ray.train.dpo import DpoTask

        return DpoTask(**kwargs)
    raise ValueError(f"unknown training task {name!r}")
