"""Loading a job: the YAML file (or a packaged job by name), `extends:`, `--set` overrides and the
CLI's shortcuts, then validation, with one line naming the field and who set it.

    job = load_job("tiny", ["sl_cai.num_rounds=2"], limit=8)   # ConfigError on a bad value
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cai_ray.config import legacy
from cai_ray.config.job import JobConfig, _format_validation, error_location
from cai_ray.errors import ConfigError, InputError
from cai_ray.rundir import readers

PACKAGED_JOBS = Path(__file__).resolve().parents[1] / "jobs"
SHORTCUTS = {"model": ["model", "name"], "prompts": ["prompts", "red_team"],
             "limit": ["prompts", "limit"], "run_dir": ["run_dir"], "stages": ["stages"]}
"""The CLI's flags and the job fields they set."""


def redact(text: str) -> str:
    """`scheme://user:password@host` with the user and password hidden (error lines, logs)."""
    import re

    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'sl_cai.num_rounds=2' -> (['sl_cai', 'num_rounds'], 2); values are parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = readers.parse_yaml(raw, f"--set {key}") if raw.strip() else ""
    except InputError as exc:
        if ": invalid YAML (" not in str(exc):  # a duplicate key, nesting: refused
            raise ConfigError(str(exc)) from None
        value = raw  # not YAML: the text itself
    return path, value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for p in path[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {p} is not a section")
        node = nxt
    node[path[-1]] = value


def read_job_file(path: str | Path | None, _depth: int = 0) -> tuple[dict, str]:
    """Raw YAML mapping of a job file (None: the packaged default job) and its display name. A
    file with `extends: NAME` is that job file with this one's fields over it."""
    if path is None:
        path = PACKAGED_JOBS / "default.yaml"
    elif not readers.exists(path) and (PACKAGED_JOBS / f"{path}.yaml").exists():
        path = PACKAGED_JOBS / f"{path}.yaml"
    p = Path(path)
    if not readers.exists(p):
        raise ConfigError(f"{p}: job file not found (give a YAML path, or one of "
                          f"{sorted(x.stem for x in PACKAGED_JOBS.glob('*.yaml'))})")
    try:
        data = readers.read_yaml(p, "job", "job file")
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the job file must be a mapping of sections, got "
                          f"{readers.type_name(data)}")
    parent = data.pop("extends", None)
    if parent is not None:  # another job file (a path beside this one, or a packaged name)
        if _depth >= 8:
            raise ConfigError(f"{p}: extends: more than 8 levels (a cycle?)")
        if not isinstance(parent, str):
            raise ConfigError(f"{p}: extends: give a job file name or path, got "
                              f"{readers.type_name(parent)}")
        near = p.parent / parent
        base, _ = read_job_file(near if readers.exists(near) else parent, _depth + 1)
        data = deep_merge(base, data)
    return data, str(p)


def deep_merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k),
                                                                             dict) else v
    return out


def load_job(path: str | Path | None = None, overrides: list[str] = (), **flags: Any) -> JobConfig:
    """Load, override and validate. `flags` are the CLI shortcuts (model, prompts, limit, run_dir,
    stages), applied after the --set overrides. Raises ConfigError naming the field."""
    data, source = read_job_file(path)
    try:
        data = legacy.migrate(data)  # before overrides: --set rl.x must meet the file's ppo: x
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    for item in overrides:
        key, value = parse_override(item)
        apply_override(data, legacy.override_path(key), value)
    shortcuts = SHORTCUTS
    for key, value in flags.items():
        if value is None:
            continue
        if key == "prompts":
            value = [value] if isinstance(value, str) else list(value)
        if key == "stages" and isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        if key == "limit" and value is not None and value < 1:
            raise ConfigError(f"--limit {value}: prompts.limit must be at least 1")
        apply_override(data, shortcuts[key], value)
    try:
        return _applied(JobConfig.model_validate(data))
    except ValidationError as err:
        loc, _ = error_location(err.errors()[0])
        for item in overrides:  # blame the --set that introduced the bad value, if one did
            path = list(legacy.override_path(parse_override(item)[0]))
            n = min(len(path), len(loc))  # the --set's path lies under the error, or above it
            if n and path[:n] == list(loc[:n]):
                source = f"--set {redact(item)}"
        for key, value in flags.items():  # ... or the flag (--stages, --run-dir, ...)
            if value is not None and tuple(shortcuts[key]) == tuple(loc[:len(shortcuts[key])]):
                source = f"--{key.replace('_', '-')} {value}"
        raise ConfigError(_format_validation(err, source)) from None


def job_from_record(config: Any, source: str, **over: Any) -> JobConfig:
    """The job a run directory's manifest recorded (`config`), with `over` laid on it; a damaged
    record is one ConfigError naming its field."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: no job config recorded; run `cai-ray run` on this run "
                          f"directory first")
    try:
        return _applied(JobConfig.model_validate({**config, **over}))
    except ValidationError as err:
        raise ConfigError(_format_validation(err, f"{source}: config") + "; the recorded job "
                          "is damaged: restore manifest.json.previous or move the run "
                          "directory aside") from None


def _applied(job: JobConfig) -> JobConfig:
    """A loaded job's process-wide settings take effect: whether model folders may run their
    own code is the job's model.trust_remote_code, not whatever the environment said."""
    from cai_ray import models

    models.allow_remote_code(job.model.trust_remote_code)
    return job
