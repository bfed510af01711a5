"""What a run reports: experiment tracking (here: the job as one parent run and each stage as a
child run in MLflow and/or Weights & Biases, from the driver alone) and the console (console.py).

    tracking = Tracking.open(job, run_dir)            # load-time checked: check(job)
    with tracking.stage("sft", digest) as st:         # child run; follows sft/metrics.jsonl
        result = run_the_stage()
    st.finish(result)                                 # key figures, artifacts, FINISHED
    tracking.close("FINISHED")

A driver thread follows RUN_DIR/<stage>/metrics.jsonl (one JSON object per step, written by rank 0
or the RL loop) and sends each new row on the stage's step axis: no credentials or tracker client
reach a worker, and a resumed stage sends on from RUN_DIR/<stage>/.tracked.json's step. Run ids
go in the manifest (`tracking`), so `--resume` continues the same runs. A tracker is a class with
Tracker's methods, registered by name (register_tracker); `tracking.<name>` turns it on.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from cai_ray.errors import InputError
from cai_ray.rundir.files import write_json_atomic

if TYPE_CHECKING:
    from cai_ray.config import JobConfig
    from cai_ray.rundir.layout import RunDir

log = logging.getLogger(__name__)

ARTIFACTS = ("*.png", "*.html", "report.md", "result.json")
"""What of a stage's folder goes to its child run when the stage ends."""
FOLLOW_EVERY_S = 2.0


class Tracker(Protocol):
    """One experiment tracker, as the driver uses it. `ids` are what the manifest kept from an
    earlier run of the job (None: new runs)."""

    def open_job(self, name: str, params: dict[str, str], ids: dict | None) -> dict: ...
    def open_stage(self, stage: str, ids: dict | None) -> dict: ...
    def log_metrics(self, stage: str, rows: list[tuple[int, dict[str, float]]]) -> None: ...
    def log_figures(self, stage: str, figures: dict[str, float]) -> None: ...
    def log_artifacts(self, stage: str | None, paths: list[Path]) -> None: ...
    def close_stage(self, stage: str, status: str) -> None: ...
    def close_job(self, status: str) -> None: ...


TRACKERS: dict[str, tuple[Callable[[Any, Path], Tracker], str, Callable[[Any], bool]]] = {}
"""name -> (factory(section, run_dir), the package it needs, is_on(section))."""


def register_tracker(name: str, factory, package: str, is_on) -> None:
    TRACKERS[name] = (factory, package, is_on)


def _builtin() -> None:
    from cai_ray.tracking import mlflow_tracker, wandb_tracker  # noqa: F401  (they register)


def enabled(job: JobConfig) -> list[str]:
    _builtin()
    return [n for n, (_, _, on) in TRACKERS.items() if on(getattr(job.tracking, n, None))]


def check(job: JobConfig) -> None:
    """Load time: every tracker the job turns on has its package (exit 2 with the install line);
    the sections' own values were checked when the job loaded (cai_ray/config/tracking.py)."""
    for name in enabled(job):
        package = TRACKERS[name][1]
        if importlib.util.find_spec(package) is None:
            raise InputError(f"tracking.{name}: needs the {package} package, which is not "
                             f"installed; pip install 'cai-ray[{name}]' (or turn it off)")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"rl": {"lr": 1e-6}} -> {"rl.lr": 1e-6}; lists stay whole."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def params_of(job: JobConfig) -> dict[str, str]:
    """The resolved job, flattened, as parameters (values as text)."""
    return {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in
            flatten(job.model_dump(mode="json")).items()}


def numbers(row: dict) -> dict[str, float]:
    """The finite numbers of a row (nested keys joined by '/'; booleans and text left out)."""
    out = {}
    for k, v in flatten(row).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k.replace(".", "/")] = float(v)
    return out


class Follower:
    """Sends the rows a stage appends to its metrics.jsonl to the trackers, from `after` on (the
    last step they have), on a thread of the driver until stop(); a file rewritten shorter (RL's
    resume truncates it) is read again from its start, rows it has sent skipped by step."""

    def __init__(self, path: Path, send: Callable[[list[tuple[int, dict]]], None], after: int):
        self.path, self.send, self.last = path, send, after
        self._pos, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="cai-tracking")

    def start(self) -> Follower:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(FOLLOW_EVERY_S):
            self.poll()

    def poll(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size < self._pos:
            self._pos = 0
        rows = []
        with open(self.path, "rb") as fh:
            fh.seek(self._pos)
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # a row still being written: the next poll takes it
                self._pos += len(line)
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                step = row.get("step") if isinstance(row, dict) else None
                if isinstance(step, int) and step > self.last:
                    rows.append((step, numbers({k: v for k, v in row.items() if k != "step"})))
                    self.last = step
        if rows:
            try:
                self.send(rows)
            except Exception as exc:  # a tracker that fails does not fail the stage
                log.warning("tracking: could not send %d row(s) of %s: %s", len(rows),
                            self.path, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.poll()


class Tracking:
    """Every tracker the job turns on, run ids kept in the manifest (`tracking`)."""

    def __init__(self, trackers: dict[str, Tracker], run: RunDir):
        self.trackers, self.run = trackers, run

    @classmethod
    def open(cls, job: JobConfig, run: RunDir) -> Tracking:
        names = enabled(job)
        if not names:
            return cls({}, run)
        ids = run.manifest().get("tracking") or {}
        trackers, params = {}, params_of(job)
        for name in names:
            trackers[name] = TRACKERS[name][0](getattr(job.tracking, name), run.path)
            kept = ids.get(name) if isinstance(ids.get(name), dict) else None
            ids[name] = {**(kept or {}), **trackers[name].open_job(job.name, params, kept)}
        run.note("tracking", ids)
        print("tracking: " + "; ".join(f"{n} {ids[n].get('url') or ids[n].get('run_id', '?')}"
                                       for n in names), flush=True)
        return cls(trackers, run)

    def _each(self, what: str, call: Callable[[str, Tracker], Any]) -> None:
        for name, tr in self.trackers.items():
            try:
                call(name, tr)
            except Exception as exc:
                log.warning("tracking: %s could not %s: %s", name, what, exc)

    def stage(self, stage: str, digest: str) -> _StageRun:
        return _StageRun(self, stage, digest)

    def close(self, status: str) -> None:
        if not self.trackers:
            return
        manifest = self.run.manifest_path
        self._each("log the manifest", lambda n, t: t.log_artifacts(None, [manifest]))
        self._each("close the job", lambda n, t: t.close_job(status))


class _StageRun:
    def __init__(self, tracking: Tracking, stage: str, digest: str):
        self.t, self.stage, self.digest = tracking, stage, digest
        self.dir = tracking.run.path / stage
        self.follower: Follower | None = None

    def __enter__(self) -> _StageRun:
        if not self.t.trackers:
            return self
        ids = self.t.run.manifest().get("tracking") or {}
        for name, tr in self.t.trackers.items():
            stages = ids.setdefault(name, {}).setdefault("stages", {})
            kept = stages.get(self.stage)
            kept = kept if isinstance(kept, dict) and kept.get("digest") == self.digest else None
            try:
                stages[self.stage] = {**tr.open_stage(self.stage, kept), "digest": self.digest}
            except Exception as exc:
                log.warning("tracking: %s could not open a run for %s: %s", name, self.stage, exc)
        self.t.run.note("tracking", ids)
        self.follower = Follower(self.dir / "metrics.jsonl", self._send, self._cursor()).start()
        return self

    def _cursor(self) -> int:
        try:
            return int(json.loads((self.dir / ".tracked.json").read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _send(self, rows: list[tuple[int, dict]]) -> None:
        self.t._each("log metrics", lambda n, tr: tr.log_metrics(self.stage, rows))
        write_json_atomic(self.dir / ".tracked.json", {"step": rows[-1][0]})

    def __exit__(self, exc_type, exc, tb) -> None:
        """The stage's work is over: the last rows sent; a failed stage's runs closed here (a
        finished one's by finish(), once its result is written)."""
        if not self.t.trackers:
            return
        if self.follower is not None:
            self.follower.stop()
        if exc_type is not None:
            self._close({}, "KILLED" if issubclass(exc_type, (KeyboardInterrupt, SystemExit))
                        else "FAILED")

    def finish(self, result: dict) -> None:
        if self.t.trackers:
            self._close(numbers(result), "FINISHED")

    def _close(self, figures: dict, status: str) -> None:
        self.t._each("log figures", lambda n, tr: tr.log_figures(self.stage, figures))
        self.t._each("log artifacts", lambda n, tr: tr.log_artifacts(self.stage, artifacts(
            self.dir)))
        self.t._each("close a stage", lambda n, tr: tr.close_stage(self.stage, status))


def artifacts(folder: Path) -> list[Path]:
    return sorted(p for pat in ARTIFACTS for p in folder.glob(pat) if p.is_file())


def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
