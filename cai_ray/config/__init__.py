"""The job file: one typed, validated YAML document with command-line overrides.

    job = load_job("tiny", ["sl_cai.num_rounds=2"])   # ConfigError naming the field
    job.sft.lr, job.section("my_plugin_section")

sections.py, rl.py, judge.py and tracking.py hold one typed section per component, job.py
assembles them (JobConfig), load.py reads files and `--set` overrides, legacy.py is the one place
old keys are migrated, and plugins.py imports a job's plugins. A bad value fails here, before
any actor starts.
"""

from cai_ray.config.job import DEFAULT_STAGES, JobConfig
from cai_ray.config.load import load_job

__all__ = ["DEFAULT_STAGES", "JobConfig", "load_job"]
