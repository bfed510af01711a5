"""The checks every route of `cai-ray serve` passes first, as one ASGI middleware: the API key
(401 without touching the model), the body size (413), the time a client takes to send its body
(408), and, for generation routes, what one request may ask of the model (400): max_tokens an
integer within the limit, n (and best_of) within its limit, and n x max_tokens within the tokens
one request may produce. A generation request without max_tokens gets the limit as its max_tokens
(the body is rewritten), so no request runs to the end of the context unasked.

Deployments are built from their class in each replica's process, so the limits reach the
middleware through `configure()`, which each deployment's constructor calls with what the command
line decided. Only the key's SHA-256 travels to the replicas.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass


@dataclass
class Limits:
    key_sha256: str | None = None
    max_request_bytes: int = 1_000_000
    max_tokens: int = 1024
    max_n: int = 8
    max_request_tokens: int = 4096
    """n x max_tokens: what one request may make the model produce."""
    read_timeout_s: float = 10.0
    """A body not received in full by then gets 408 (behind HAProxy the ingress enforces it
    first; behind Ray's proxy this is the one check)."""


_LIMITS = Limits()
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")


def configure(limits: dict | Limits | None) -> None:
    global _LIMITS
    if limits is not None:
        _LIMITS = limits if isinstance(limits, Limits) else Limits(**limits)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def error_body(status: int, message: str, kind: str) -> bytes:
    """The OpenAI error shape, which the openai client turns into its exception's message."""
    return json.dumps({"error": {"message": message, "type": kind, "code": status,
                                 "param": None}}).encode()


def check_key(headers: dict[str, str], limits: Limits) -> str | None:
    """None when the request may pass, else why not."""
    if not limits.key_sha256:
        return None
    auth = headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return "missing API key: send `Authorization: Bearer KEY`"
    if not hmac.compare_digest(key_digest(given.strip()), limits.key_sha256):
        return "wrong API key"
    return None


def check_body(path: str, body: bytes, limits: Limits) -> tuple[str | None, bytes]:
    """(why the request is refused, or None; the body to pass on). For generation routes:
    max_tokens and max_completion_tokens integers within the limit (a string or a float is
    refused, not read as a number), n and best_of integers within max_n, and n x max_tokens
    within max_request_tokens; max_tokens set to the limit when the request gives none. A body
    that is not a JSON object passes through as it is: the route answers it with its own 400."""
    if not path.rstrip("/").endswith(GENERATION_PATHS):
        return None, body
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        return None, body
    if not isinstance(data, dict):
        return None, body
    tokens = None
    for key in ("max_tokens", "max_completion_tokens"):
        v = data.get(key)
        if v is None:
            continue
        if not _is_int(v):
            return f"{key} must be an integer, got {json.dumps(v)[:40]}", body
        if v > limits.max_tokens:
            return f"{key} {v} is above this server's limit of {limits.max_tokens}", body
        tokens = v if tokens is None else min(tokens, v)
    count = 1
    for key in ("n", "best_of"):
        v = data.get(key)
        if v is None:
            continue
        if not _is_int(v):
            return f"{key} must be an integer, got {json.dumps(v)[:40]}", body
        if v > limits.max_n:
            return f"{key} {v} is above this server's limit of {limits.max_n}", body
        count = max(count, v)
    if tokens is None:  # unbounded by the client: the server's limit applies
        tokens = limits.max_tokens
        data["max_tokens"] = tokens
        body = json.dumps(data).encode()
    if count * tokens > limits.max_request_tokens:
        return (f"n x max_tokens = {count} x {tokens} = {count * tokens} tokens is above this "
                f"server's limit of {limits.max_request_tokens} per request"), body
    return None, body


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class Guard:
    """ASGI middleware: key, body size, max_tokens; then the app, with the body replayed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope = _prefix_is_root(scope)
        limits = _LIMITS
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        why = check_key(headers, limits)
        if why:
            return await _reply(send, 401, why, "authentication_error")
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
            return await _reply(send, 413, _too_big(limits), "invalid_request_error")
        try:
            body = await asyncio.wait_for(_read_body(receive, limits), limits.read_timeout_s)
        except asyncio.TimeoutError:
            return await _reply(send, 408, f"request body not received within "
                                f"{limits.read_timeout_s:g} s", "invalid_request_error")
        if body is None:  # the client left
            return
        if isinstance(body, str):
            return await _reply(send, 413, body, "invalid_request_error")
        why, passed = check_body(scope.get("path", ""), body, limits)
        if why:
            return await _reply(send, 400, why, "invalid_request_error")
        if passed is not body:  # rewritten (max_tokens added): its length changed
            body = passed
            scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", [])
                                          if k.lower() != b"content-length"]
                     + [(b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _read_body(receive, limits: Limits) -> bytes | str | None:
    """The whole body; a str (why) when it is over the size limit; None when the client left."""
    chunks, size, more = [], 0, True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limits.max_request_bytes:
            return _too_big(limits)
        chunks.append(chunk)
        more = msg.get("more_body", False)
    return b"".join(chunks)


def _prefix_is_root(scope: dict) -> dict:
    """POST /v1/judge reaches an app mounted at /v1/judge as its own root; without this, Starlette
    answers 307 to /v1/judge/ (which clients do not follow for POST)."""
    root = scope.get("root_path", "")
    if root and scope.get("path", "") in ("", root):
        scope = {**scope, "path": root + "/", "raw_path": (root + "/").encode()}
    return scope


def _too_big(limits: Limits) -> str:
    return f"request body is larger than this server's limit of {limits.max_request_bytes} bytes"


async def _reply(send, status: int, message: str, kind: str) -> None:
    body = error_body(status, message, kind)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
