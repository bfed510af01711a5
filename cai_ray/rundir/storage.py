"""A run directory on object storage: `--run-dir s3://bucket/prefix` (or gs://, hdfs://, anything
pyarrow.fs opens).

The job runs in a local working copy (CAI_RAY_RUN_CACHE, default ~/.cache/cai-ray/runs/<slug>),
pulled from the URI before the run, so a job on a fresh cluster resumes where the last one stopped,
and pushed back as it goes: after every stage, every `every_s` seconds while a stage runs (progress
logs, checkpoints), and when the run ends or fails. A push mirrors: files pruned locally (old
checkpoints) are deleted remotely too, so the bucket is bounded like the local folder.

S3 options ride on the URI as pyarrow reads them: s3://bucket/run?endpoint_override=127.0.0.1:9000
&scheme=http (an S3-compatible server), region=...; credentials from the usual AWS variables.

    remote = Remote.open(uri)        # InputError if unreachable (exit 2, nothing touched)
    remote.pull(local, only=["manifest.json"]); remote.pull(local); remote.push(local)
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cai_ray.errors import InputError

log = logging.getLogger("cai_ray")

CONNECT_TIMEOUT_S = 10.0
TRAIN_STORAGE = ".ray_train"
"""Ray Train's checkpoints of a running fit, written by its workers straight to the storage (any
node may restart a worker); not pulled into working copies, removed when the fit succeeds."""
REQUEST_TIMEOUT_S = 60.0


def is_uri(spec: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec or ""))


def local_copy(uri: str) -> Path:
    """The local working copy of a remote run directory (one per URI)."""
    root = Path(os.environ.get("CAI_RAY_RUN_CACHE",
                               Path.home() / ".cache" / "cai-ray" / "runs"))
    u = urlsplit(uri)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{u.scheme}_{u.netloc}{u.path}").strip("_")[:80]
    return root / f"{slug}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}"


def _filesystem(uri: str):
    """(pyarrow filesystem, root path inside it). S3 gets bounded timeouts and retries, so an
    unreachable endpoint fails in seconds, not after minutes of retries."""
    import pyarrow.fs as pafs

    u = urlsplit(uri)
    if u.scheme == "s3":
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        known = {"endpoint_override", "scheme", "region", "allow_bucket_creation"}
        bad = sorted(set(q) - known)
        if bad:
            raise InputError(f"--run-dir {uri}: unknown option(s) {bad}; S3 URIs take "
                             f"{sorted(known)}")
        fs = pafs.S3FileSystem(
            endpoint_override=q.get("endpoint_override"), scheme=q.get("scheme"),
            region=q.get("region"), allow_bucket_creation=q.get("allow_bucket_creation") == "true",
            connect_timeout=CONNECT_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2))
        return fs, f"{u.netloc}{u.path}".rstrip("/")
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


class Remote:
    """The run directory's storage: pull into a local copy, push the local copy back (mirror)."""

    def __init__(self, uri: str, fs, root: str):
        self.uri, self.fs, self.root = uri, fs, root
        self._pushed: dict[str, tuple[int, int]] = {}  # rel path -> (size, mtime_ns) last pushed
        self._lock = threading.Lock()

    @classmethod
    def open(cls, uri: str) -> "Remote":
        """Opened and probed (a listing of the bucket or its parent): InputError naming the URI
        when the scheme is unknown, the endpoint does not answer, or access is refused."""
        import pyarrow.fs as pafs

        try:
            fs, root = _filesystem(uri)
            bucket = root.split("/", 1)[0]
            info = fs.get_file_info(bucket if isinstance(fs, pafs.S3FileSystem) else root)
        except InputError:
            raise
        except Exception as exc:  # pyarrow raises OSError / ArrowInvalid with the reason
            msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise InputError(f"--run-dir {uri}: cannot use this storage ({msg}); check the URI, "
                             f"the endpoint and the credentials (AWS_ACCESS_KEY_ID, ...)") from None
        if isinstance(fs, pafs.S3FileSystem) and info.type == pafs.FileType.NotFound:
            raise InputError(f"--run-dir {uri}: bucket {bucket!r} does not exist; create it first "
                             f"(or add ?allow_bucket_creation=true)")
        return cls(uri, fs, root)

    # -- down ----------------------------------------------------------------------------------
    def _remote_files(self, prefix: str = "") -> dict[str, int]:
        """rel path -> size of the remote files (under `prefix`, a folder or one file); Ray
        Train's own storage (.ray_train/) is not part of the run's files."""
        import pyarrow.fs as pafs

        base = f"{self.root}/{prefix}".rstrip("/")
        one = self.fs.get_file_info(base) if prefix else None
        if one is not None and one.type == pafs.FileType.File:
            return {prefix: one.size}
        sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        return {i.path[len(self.root) + 1:]: i.size for i in self.fs.get_file_info(sel)
                if i.type == pafs.FileType.File and not i.path[len(self.root) + 1:]
                .startswith(TRAIN_STORAGE + "/")}

    def pull(self, local: Path, only: list[str] | None = None, prefix: str = "",
             missing_only: bool = False) -> int:
        """Download the remote files (or just `only`, or those under `prefix`) that are missing or
        differ in size locally (missing_only: only those missing); returns how many. A run on a
        fresh machine resumes from what the last one pushed."""
        n = 0
        for rel, size in self._remote_files(prefix).items():
            if only is not None and rel not in only:
                continue
            dest = local / rel
            same = dest.exists() and dest.stat().st_size == size
            if same or (missing_only and dest.exists()):
                if same:  # in sync; a local file that differs still has to go up
                    self._mark(local, rel)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.pull{os.getpid()}")
            with self.fs.open_input_stream(f"{self.root}/{rel}") as src, open(tmp, "wb") as out:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
            os.replace(tmp, dest)
            self._mark(local, rel)  # what came down is in sync; nothing else local is
            n += 1
        return n

    def _mark(self, local: Path, rel: str) -> None:
        st = (local / rel).stat()
        with self._lock:
            self._pushed[rel] = (st.st_size, st.st_mtime_ns)

    def upload_tree(self, local: Path, prefix: str) -> int:
        """Upload the files under local/prefix that the remote lacks or holds at another size
        (a worker on another node publishing what it wrote); nothing is deleted. Returns how
        many."""
        have = self._remote_files(prefix)
        top = local / prefix
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        n = 0
        for p in files:
            rel = str(p.relative_to(local))
            if not _private(rel) and have.get(rel) != p.stat().st_size:
                self._upload(p, rel)
                n += 1
        return n

    # -- up ------------------------------------------------------------------------------------
    def push(self, local: Path) -> dict:
        """Mirror the local copy: upload new or changed files, delete remote files that are gone
        locally. Temporary files (.name.tmpPID, the lock) stay local."""
        with self._lock:
            now: dict[str, tuple[int, int]] = {}
            for p in local.rglob("*"):
                rel = str(p.relative_to(local))
                if p.is_file() and not _private(rel):
                    try:
                        st = p.stat()
                    except OSError:  # removed while we walked
                        continue
                    now[rel] = (st.st_size, st.st_mtime_ns)
            up = [r for r, sig in now.items() if self._pushed.get(r) != sig]
            gone = [r for r in self._pushed if r not in now]
            sent = 0
            for rel in up:
                try:
                    sent += self._upload(local / rel, rel)
                except FileNotFoundError:  # replaced or pruned meanwhile: the next push has it
                    continue
                self._pushed[rel] = now[rel]
            for rel in gone:
                try:
                    self.fs.delete_file(f"{self.root}/{rel}")
                except FileNotFoundError:
                    pass
                self._pushed.pop(rel, None)
            return {"uploaded": len(up), "deleted": len(gone), "bytes": sent}

    def _upload(self, path: Path, rel: str) -> int:
        import pyarrow.fs as pafs

        n = 0
        if not isinstance(self.fs, pafs.S3FileSystem) and "/" in rel:  # folders are real there
            self.fs.create_dir(f"{self.root}/{rel.rsplit('/', 1)[0]}", recursive=True)
        with open(path, "rb") as src, self.fs.open_output_stream(f"{self.root}/{rel}") as out:
            while chunk := src.read(8 << 20):
                out.write(chunk)
                n += len(chunk)
        return n


def _private(rel: str) -> bool:
    """Files that stay local: the lock, and anything under a temporary name (atomic writes'
    .name.tmpPID, pulls in progress, Ray Train's .ckpt- staging folders)."""
    parts = rel.split("/")
    return parts[-1] == ".lock" or parts[0] == TRAIN_STORAGE or any(
        p.startswith(".") and (".tmp" in p or ".pull" in p or p.startswith(".ckpt-"))
        for p in parts)


class Syncer:
    """Pushes the local copy every `every_s` seconds from a background thread while a run goes on,
    and once more at the end."""

    def __init__(self, remote: Remote, local: Path, every_s: float = 30.0):
        self.remote, self.local, self.every_s = remote, local, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="run-dir-sync")
        self.pushes = 0

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.push()

    def push(self) -> None:
        try:
            self.remote.push(self.local)
            self.pushes += 1
        except Exception as exc:  # a failed push is retried on the next one; the run goes on
            log.warning("run directory sync to %s failed (%s); retrying later", self.remote.uri,
                        exc)

    def __enter__(self) -> "Syncer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.remote.push(self.local)  # the last push must land: a failure here is an error
