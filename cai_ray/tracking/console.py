"""What a run shows on the console, and where everything else goes.

By default the console has the job's own lines: one when each stage starts, progress bars on long
work, warnings and errors of cai-ray, and the summary. The libraries' logs (Ray, vLLM, DeepSpeed,
transformers, their Python warnings) go to RUN_DIR/logs/: driver.log for the driver process, and
ray/ for Ray's own folder of one file per process (every actor and Ray Train worker: vLLM engines,
trainers). An error of a library still reaches the console, with the path of the full log.
`-v` brings everything back to the console (and Ray's worker output with it).

    console.setup(verbose)          # the CLI, once
    console.to_run_dir(run_dir)     # the pipeline, once the run directory is open
"""

from __future__ import annotations

import collections
import logging
import os
import sys
from pathlib import Path

OURS = "cai_ray"
FORMAT = "%(levelname)s %(name)s: %(message)s"
_file_handler: logging.Handler | None = None


class _Early(logging.Handler):
    """The last 10,000 records from INFO up before the run directory is open (Ray's start-up)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: collections.deque = collections.deque(maxlen=10_000)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_early: _Early | None = None


def verbose() -> bool:
    return os.environ.get("CAI_RAY_VERBOSE") == "1"


class _OursOrErrors(logging.Filter):
    """cai-ray's records from WARNING up; anyone's from ERROR up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        ours = record.name == OURS or record.name.startswith(OURS + ".")
        return ours and record.levelno >= logging.WARNING


def setup(is_verbose: bool) -> None:
    """The console handler on the root logger; Python warnings become log records (py.warnings),
    so that a library's warning goes where its logs go."""
    os.environ["CAI_RAY_VERBOSE"] = "1" if is_verbose else "0"
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    if not is_verbose:
        handler.addFilter(_OursOrErrors())
    for h in list(root.handlers):
        if getattr(h, "_cai_console", False):
            root.removeHandler(h)
    handler._cai_console = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    global _early
    if _early is not None:
        root.removeHandler(_early)
    _early = _Early()
    root.addHandler(_early)  # what comes before the run directory is open (Ray's start-up)
    logging.captureWarnings(True)
    if not is_verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("WANDB_SILENT", "true")


LIBRARY_LOGGERS = ("ray", "vllm", "deepspeed", "transformers", "datasets", "urllib3")


def adopt_library_loggers() -> None:
    """Libraries that print through a console handler of their own (Ray's `ray` logger, vLLM's)
    send their records to the root logger instead: RUN_DIR/logs/driver.log gets all of them, the
    console what the level filter lets through (everything with -v). Call after importing them."""
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        for h in list(lib.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lib.removeHandler(h)
        lib.propagate = True


def to_run_dir(run_dir: str | Path) -> Path | None:
    """Every log record of this process from INFO up to RUN_DIR/logs/driver.log (appended: a
    resumed run adds to it). Returns the logs folder (None where it cannot be written)."""
    global _file_handler
    logs = Path(run_dir) / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(logs / "driver.log", encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s " + FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    if _file_handler is not None:
        root.removeHandler(_file_handler)
        _file_handler.close()
    _file_handler = handler
    root.addHandler(handler)
    global _early
    if _early is not None:  # the records from before: first in the file
        root.removeHandler(_early)
        for record in _early.records:
            handler.handle(record)
        _early = None
    return logs


def link_ray_logs(logs: Path | None) -> None:
    """RUN_DIR/logs/ray -> this Ray session's logs folder (one file per process) on this node."""
    if logs is None:
        return
    try:
        import ray

        node = ray._private.worker._global_node  # the session this driver started or joined
        target = Path(node.get_logs_dir_path()) if node is not None else None
    except Exception:
        target = None
    if target is None or not target.is_dir():
        return
    link = logs / "ray"
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    except OSError:
        pass


def stage_line(i: int, n: int, stage: str, about: str) -> None:
    """The one line a stage prints when it starts."""
    print(f"[{i}/{n}] {stage}: {about}", flush=True)
