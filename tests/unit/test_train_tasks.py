"""The training tasks' registry (cai_ray/train/tasks.py): every name builds its task from plain
values, an unknown name is refused, and a task crosses a process boundary intact (it is what Ray
Train's workers receive inside a FitSpec)."""

import pickle

import pytest

from cai_ray.train.tasks import TASKS, make_task, task_class


def test_every_registered_task_builds_and_says_its_name():
    for name in TASKS:
        task = make_task(name, max_len=128)
        assert task.name == name and task.max_len == 128
        assert task_class(name) is type(task)


def test_task_options_reach_the_task():
    dpo = make_task("dpo", max_len=64, beta=0.3, loss_type="ipo", share_prompt=False)
    assert (dpo.beta, dpo.loss_type, dpo.share_prompt) == (0.3, "ipo", False)
    assert make_task("sft", packing=True).packing
    assert make_task("reward").lora_task_type == "SEQ_CLS"


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown training task 'ppo'"):
        make_task("ppo")


def test_a_fit_spec_crosses_a_process_boundary():
    from cai_ray.config.sections import LoraCfg, SftCfg
    from cai_ray.train.core import FitSpec
    from cai_ray.train.spec import TrainSpec

    spec = TrainSpec.of(SftCfg(lora=LoraCfg(rank=4), zero_stage=3), plugins=("my.ext",))
    fs = FitSpec(make_task("sft", max_len=32), spec, "/m", "/d", "/o", "/o/model", seed=3)
    back = pickle.loads(pickle.dumps(fs))
    assert back.train == spec and back.train.lora.rank == 4 and back.train.zero_stage == 3
    assert back.task.max_len == 32 and back.seed == 3 and back.train.plugins == ("my.ext",)
