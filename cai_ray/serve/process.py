"""What a foreground `cai-ray serve` owns on this machine, and how it lets go of all of it.

A local cluster's processes (GCS, raylet, replicas, vLLM engine cores, HAProxy) all descend from
the serve command. A SIGTERM to its process group orphans the grandchildren, so the command is
their "child subreaper" and `sweep()` ends every descendant (SIGTERM, then SIGKILL) before it
leaves. Its Ray driver may exit first (the raylet dies with the same signal), so a guard in a
session of its own (`start_guard`) notes the descendants and ends what is left once the command
has ended, however it ended.

A record per running server ($CAI_RAY_CACHE/serve/PORT.json: pid, port, Ray address) is how
`--status` / `--stop` without --address find the cluster this command started, and only it.

    become_subreaper(); atexit.register(sweep)
    write_record(port, info); live_records() -> [{"pid", "port", "ray_address", ...}]
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphaned descendants of this process come back to it (Linux); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def start_guard() -> None:
    """Start the guard of this process's descendants (`python -m cai_ray.serve.process PID`)."""
    import subprocess
    import sys

    subprocess.Popen([sys.executable, "-m", "cai_ray.serve.process", str(os.getpid())],
                     start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _started(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/PID/stat): tells it from a later one that was
    given the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def guard(owner: int, poll_s: float = 0.5, grace_s: float = 5.0) -> list[int]:
    """While `owner` runs, note its descendants; after, end the ones still running (SIGTERM,
    grace_s, SIGKILL). Returns the pids it ended."""
    me, seen = os.getpid(), {}
    while alive(owner):
        for p in descendants(owner):
            if p != me and p not in seen:
                seen[p] = _started(p)
        time.sleep(poll_s)
    return _end(lambda: [p for p, t in seen.items() if alive(p) and _started(p) == t], grace_s)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: fields follow the last ')'
        out[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(pid: int | None = None) -> list[int]:
    """Every process below `pid` (default: this one), nearest first."""
    root = os.getpid() if pid is None else pid
    parents = _parents()
    children: dict[int, list[int]] = {}
    for p, pp in parents.items():
        children.setdefault(pp, []).append(p)
    out, todo = [], list(children.get(root, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo += children.get(p, [])
    return out


def alive(pid: int) -> bool:
    """Running (a zombie, which has exited and waits to be reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _reap() -> None:
    """Collect the exit status of children that ended (orphans we adopted included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def sweep(grace_s: float = 5.0) -> list[int]:
    """End every descendant: SIGTERM, up to grace_s for them to go, then SIGKILL; repeated until
    none is left (a process may start another while it is being stopped). Returns the pids."""
    ended = _end(lambda: [p for p in descendants() if alive(p)], grace_s, _reap)
    _reap()
    return ended


def _end(live, grace_s: float, reap=lambda: None) -> list[int]:
    """SIGTERM the processes live() names, up to grace_s for them to go, then SIGKILL; asked
    again each round (a process may start another while it is being stopped). reap: collects
    exited children while waiting. Returns the pids signalled."""
    ended: list[int] = []
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0), (signal.SIGKILL, 2.0)):
        pids = live()
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        ended += [p for p in pids if p not in ended]
        deadline = time.time() + wait_s
        while time.time() < deadline:
            reap()
            if not any(alive(p) for p in pids):
                break
            time.sleep(0.1)
    return ended


# -- records -------------------------------------------------------------------------------------

def records_dir() -> Path:
    cache = os.environ.get("CAI_RAY_CACHE") or os.path.expanduser("~/.cache/cai-ray")
    return Path(cache) / "serve"


def write_record(port: int, info: dict) -> Path:
    d = records_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{port}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**info, "pid": os.getpid(), "port": port,
                               "started": time.time()}))
    os.replace(tmp, path)
    return path


def remove_record(port: int) -> None:
    path = records_dir() / f"{port}.json"
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def live_records() -> list[dict]:
    """Records of servers whose process still runs (stale ones, of a killed server, are
    removed)."""
    out = []
    d = records_dir()
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
            pid = int(rec["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if alive(pid) and b"serve" in _cmdline(pid):
            out.append(rec)
        else:
            path.unlink(missing_ok=True)
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


if __name__ == "__main__":  # the guard (start_guard)
    import sys

    guard(int(sys.argv[1]))
