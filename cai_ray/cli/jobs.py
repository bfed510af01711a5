"""Submission to a Ray cluster through the Jobs API (`cai-ray submit`, `cai-ray jobs ...`).

The job file is validated here, before anything is sent. The project folder travels as the job's
working directory (without .venv, runs, .git), so the cluster runs this very code:
`python -m cai_ray.cli run JOB.yaml ...`. Ray token authentication: --token / --token-file send
the token as a bearer header; without them Ray's own client sends the token from RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token when RAY_AUTH_MODE=token.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from cai_ray.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
EXCLUDES = [".venv", "runs", ".git", "**/__pycache__", "*.egg-info", "benchmarks/results",
            ".pytest_cache"]
FORWARD_ENV = ("CAI_RAY_CACHE", "HF_HUB_OFFLINE", "VLLM_LOGGING_LEVEL")


def _auth_headers(token: str | None, token_file: str | None) -> dict:
    """An explicit bearer header for --token / --token-file (Ray reads its own token settings
    once, when it is imported, so setting them later would not reach the client)."""
    if token_file:
        from cai_ray.rundir import readers

        token = readers.read_text(token_file, "key", "token file").strip()
        if not token:
            raise InputError(f"{token_file}: token file is empty")
    return {"Authorization": f"Bearer {token}"} if token else {}


def sends_token(headers: dict) -> bool:
    """An explicit header, or Ray's own token settings in token mode."""
    if headers:
        return True
    from cai_ray.cluster import ray_token_available

    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and ray_token_available()


def check_transport(address: str, headers: dict, insecure: bool = False) -> None:
    """Refuse to send the cluster's token in clear text off this machine."""
    from urllib.parse import urlparse

    u = urlparse(address if "://" in address else f"http://{address}")
    from cai_ray.cluster import is_loopback

    if u.scheme == "http" and not is_loopback(u.hostname or "") and not insecure \
            and sends_token(headers):
        raise InputError(f"--address {address}: plain http to another machine would send the Ray "
                         f"token in clear text; use https:// (a TLS proxy in front of the "
                         f"dashboard), or pass --insecure on a network you trust")


def jobs_address(address: str | None) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS: an http(s) URL or HOST:PORT. Never a guess: a
    default port would reach whatever dashboard happens to listen on this machine."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        raise InputError("--address: name the cluster's Jobs API (its dashboard, e.g. "
                         "http://127.0.0.1:8265), or set RAY_API_SERVER_ADDRESS")
    scheme, sep, rest = address.partition("://")
    if sep and scheme not in ("http", "https"):
        raise InputError(f"--address {address}: the Jobs API speaks http:// or https://, not "
                         f"{scheme}://")
    host, colon, port = (rest if sep else address).split("/")[0].rpartition(":")
    if not host and not colon:
        host = port
    if colon and not (port.isdigit() and 0 < int(port) < 65536):
        raise InputError(f"--address {address}: the port must be a number from 1 to 65535")
    if not host:
        raise InputError(f"--address {address}: no host; give e.g. http://127.0.0.1:8265")
    return address


def client(address: str | None, token: str | None = None, token_file: str | None = None,
           insecure: bool = False):
    from ray.job_submission import JobSubmissionClient

    address = jobs_address(address)
    headers = _auth_headers(token, token_file)
    check_transport(address, headers, insecure)
    if token:
        print("cai-ray: --token shows in `ps`; prefer --token-file or RAY_AUTH_TOKEN",
              file=sys.stderr)
    try:
        return JobSubmissionClient(address, headers=headers or None)
    except Exception as exc:  # connection refused, DNS, 401: all mean "cannot use this cluster"
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        denied = ("401", "403", "unauthori", "authentication", "forbidden")
        if any(w in msg.lower() for w in denied):
            where = ("--token-file" if token_file else "--token" if token
                     else "no token was sent: give --token-file or set RAY_AUTH_TOKEN")
            raise InputError(f"{address}: the Ray Jobs API refused our credentials ({msg}); "
                             f"check the token ({where})") from None
        raise InputError(f"{address}: cannot reach the Ray Jobs API ({msg}); is the head "
                         f"running and its dashboard reachable from here?") from None


def submit(job_file: str | None, address: str, run_args: list[str], *, follow: bool = False,
           token: str | None = None, token_file: str | None = None,
           env: dict | None = None, submission_id: str | None = None,
           insecure: bool = False) -> str:
    from cai_ray.config import load_job
    from cai_ray.config.load import read_job_file

    load_job(job_file, _sets(run_args))  # validate before anything is sent
    _, source = read_job_file(job_file)
    rel = _job_path(Path(source))
    c = client(address, token, token_file, insecure)
    env_vars = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    env_vars.update(env or {})
    entry = " ".join(shlex.quote(x) for x in ["python", "-m", "cai_ray.cli", "run", rel,
                                              "--quiet", *run_args])
    runtime_env = {"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": env_vars}
    deadline = time.time() + 60
    while True:
        try:
            sid = c.submit_job(entrypoint=entry, submission_id=submission_id,
                               runtime_env=runtime_env)
            break
        except Exception as exc:
            msg = str(exc).splitlines()[0][:300]
            if "No available agent" in msg and time.time() < deadline:
                time.sleep(2)  # a head that has just started: its job agent is not up yet
                continue
            raise InputError(f"{address}: submission refused ({msg})") from None
    print(f"submitted {sid}: {entry}")
    if follow:
        return follow_job(c, sid)
    return sid


def _sets(run_args: list[str]) -> list[str]:
    out, it = [], iter(run_args)
    for a in it:
        if a == "--set":
            out.append(next(it, ""))
    return out


def _job_path(p: Path) -> str:
    """The job file as the cluster sees it: relative to the working directory, or packaged."""
    p = p.resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        raise InputError(f"{p}: the job file must live inside the project folder ({ROOT}), which "
                         f"is what travels to the cluster") from None


def follow_job(c, sid: str, poll_s: float = 1.0) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    from ray.job_submission import JobStatus

    shown = 0
    while True:
        logs = c.get_job_logs(sid)
        sys.stdout.write(logs[shown:])
        sys.stdout.flush()
        shown = len(logs)
        status = c.get_job_status(sid)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            print(f"job {sid}: {status.value}")
            return status.value
        time.sleep(poll_s)


def jobs_command(action: str, address: str, sid: str | None, token=None, token_file=None,
                 insecure: bool = False) -> int:
    c = client(address, token, token_file, insecure)
    if action == "list":
        for j in c.list_jobs():
            print(f"{j.submission_id or j.job_id:32s} {j.status.value:10s} {j.entrypoint}")
        return 0
    if not sid:
        raise InputError(f"jobs {action}: give the submission id")
    if action == "logs":
        print(c.get_job_logs(sid), end="")
    elif action == "stop":
        print(f"stop {sid}: {c.stop_job(sid)}")
    elif action == "follow":
        return 0 if follow_job(c, sid) == "SUCCEEDED" else 1
    return 0
