"""A small client for etcd's v3 JSON gateway (HTTP/1.1 POST /v3/...).

The gateway is part of every etcd server (Debian's etcd-server 3.4 included),
so talking JSON over HTTP needs nothing beyond the standard library: asyncio
streams, ssl and json. That is what Patroni does too, and it keeps a gRPC
stack out of the .deb.

Each unary call opens its own connection (``Connection: close``): a call
every keep-alive interval costs a TCP (and TLS) handshake, which is nothing
next to a multi-second TTL, and a connection is never reused after a fault.
A failing endpoint (refused, reset, hung past the attempt timeout, or etcd
answering that it has no leader) moves the client to the next one. Every
request carries ``hasleader`` metadata: a member that loses its cluster's
leader then ends our watch with "no leader" (seen with etcd 3.4) instead of
leaving it silently open; its unary calls hang until etcd's own timeout
(about 7 s), which the per-endpoint ``request_timeout`` cuts short.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("electiond.etcd")
MAX_BODY_BYTES = 8 * 1024 * 1024  # a range of a few keys is tiny; this bounds a confused server
MAX_HEADER_LINES = 100
# gRPC codes for which another member may well answer (etcd's rpctypes)
RETRY_ELSEWHERE_CODES = {4, 14}  # DeadlineExceeded ("request timed out"), Unavailable ("no leader")
UNAUTHENTICATED_CODES = {16}
AUTHENTICATE_TIMEOUT_S = 5.0


class EtcdError(Exception):
    """etcd answered with an error (``code`` is the gRPC status code)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class Unreachable(EtcdError):
    """No endpoint answered (refused, reset, timed out, bad HTTP)."""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode(errors="replace")


def prefix_end(prefix: str) -> str:
    """etcd's range end for every key starting with ``prefix`` (last byte + 1)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return base64.b64encode(bytes(raw)).decode()
        raw.pop()
    return base64.b64encode(b"\0").decode()  # the whole key space


@dataclass(frozen=True, slots=True)
class ClientOptions:
    endpoints: tuple[str, ...]
    request_timeout_s: float = 1.0
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password: str | None = None


class Endpoint:
    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.url = url
        self.tls = parsed.scheme == "https"
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 2379
        self.ok: bool | None = None  # None: never tried
        self.last_error = ""
        self.failures = 0
        self.last_ok_at: float | None = None

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "endpoint": self.url,
            "healthy": self.ok,
            "failures": self.failures,
            "last_error": self.last_error or None,
            "last_ok_ago_s": None if self.last_ok_at is None else round(now - self.last_ok_at, 3),
        }


class EtcdClient:
    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.endpoints = [Endpoint(url) for url in options.endpoints]
        self._current = 0
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self._ssl: ssl.SSLContext | None = None
        if any(ep.tls for ep in self.endpoints):
            context = ssl.create_default_context(cafile=options.ca_file)
            if options.cert_file:
                context.load_cert_chain(options.cert_file, options.key_file)
            self._ssl = context

    # ---- calls ------------------------------------------------------------------

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one request, trying each endpoint once from the current one."""
        last: EtcdError = Unreachable("no endpoint configured")
        for _ in range(len(self.endpoints)):
            endpoint = self.endpoints[self._current]
            try:
                if self.options.user and self._token is None:
                    # etcd checks the password with bcrypt, slow on a busy host: its own,
                    # longer bound, and one at a time (the token then serves every call)
                    await asyncio.wait_for(self._auth_headers(endpoint), AUTHENTICATE_TIMEOUT_S)
                answer = await asyncio.wait_for(self._authenticated(endpoint, path, body),
                                                self.options.request_timeout_s)
            except asyncio.TimeoutError:
                last = Unreachable(f"{endpoint.url}: no answer within {self.options.request_timeout_s:g}s")
            except Unreachable as exc:
                last = exc
            except EtcdError as exc:
                # a stale token (cleared in _authenticated) is retried with a fresh one
                if exc.code not in RETRY_ELSEWHERE_CODES and exc.code not in UNAUTHENTICATED_CODES:
                    self._mark(endpoint, True)  # it answered: the endpoint works, the request did not
                    raise
                last = exc
            else:
                self._mark(endpoint, True)
                return answer
            self._mark(endpoint, False, str(last))
            self._current = (self._current + 1) % len(self.endpoints)
        raise last

    async def watch(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Open a watch stream on the current endpoint; yields each result message."""
        endpoint = self.endpoints[self._current]
        headers = await asyncio.wait_for(self._auth_headers(endpoint), AUTHENTICATE_TIMEOUT_S)
        reader, writer = await asyncio.wait_for(self._connect(endpoint), self.options.request_timeout_s)
        try:
            status, chunks = await asyncio.wait_for(
                self._exchange(reader, writer, endpoint, "/v3/watch", body, headers), self.options.request_timeout_s)
            if status != 200:
                raise Unreachable(f"{endpoint.url}: watch answered HTTP {status}")
            buffer = b""
            async for chunk in chunks:
                buffer += chunk
                if len(buffer) > MAX_BODY_BYTES:
                    raise Unreachable(f"{endpoint.url}: watch message too large")
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if buffer.strip():
                yield json.loads(buffer)
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            self._mark(endpoint, False, f"watch: {exc}")
            raise Unreachable(f"{endpoint.url}: watch: {exc}") from None
        finally:
            writer.close()

    def rotate(self) -> None:
        """Move on to the next endpoint (a watch that broke on this one)."""
        self._current = (self._current + 1) % len(self.endpoints)

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [dict(ep.snapshot(now), current=k == self._current) for k, ep in enumerate(self.endpoints)]

    # ---- inside ---------------------------------------------------------------------

    def _mark(self, endpoint: Endpoint, ok: bool, error: str = "") -> None:
        # logged once per change, not per call: a dead endpoint is tried every few seconds
        if ok and endpoint.ok is False:
            log.info("etcd endpoint %s answers again", endpoint.url)
        elif not ok and endpoint.ok is not False:
            log.warning("etcd endpoint %s failing: %s", endpoint.url, error)
        endpoint.ok = ok
        if ok:
            endpoint.last_ok_at = time.monotonic()
        else:
            endpoint.failures += 1
            endpoint.last_error = error

    async def _auth_headers(self, endpoint: Endpoint) -> dict[str, str]:
        if not self.options.user:
            return {}
        async with self._auth_lock:
            if self._token is None:
                answer = await self._post(endpoint, "/v3/auth/authenticate",
                                          {"name": self.options.user, "password": self.options.password or ""}, {})
                self._token = str(answer.get("token", ""))
        return {"Authorization": self._token or ""}

    async def _authenticated(self, endpoint: Endpoint, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._post(endpoint, path, body, await self._auth_headers(endpoint))
        except EtcdError as exc:
            if exc.code not in UNAUTHENTICATED_CODES or not self.options.user:
                raise
            self._token = None  # expired (etcd's simple tokens live 5 minutes): the next call authenticates anew
            raise

    async def _connect(self, endpoint: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_connection(endpoint.host, endpoint.port,
                                                 ssl=self._ssl if endpoint.tls else None,
                                                 server_hostname=endpoint.host if endpoint.tls else None)
        except (OSError, ssl.SSLError) as exc:
            raise Unreachable(f"{endpoint.url}: {exc}") from None

    async def _post(self, endpoint: Endpoint, path: str, body: dict[str, Any],
                    headers: dict[str, str]) -> dict[str, Any]:
        reader, writer = await self._connect(endpoint)
        try:
            status, chunks = await self._exchange(reader, writer, endpoint, path, body, headers)
            data = b""
            async for chunk in chunks:
                data += chunk
                if len(data) > MAX_BODY_BYTES:
                    raise Unreachable(f"{endpoint.url}: answer too large")
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise Unreachable(f"{endpoint.url}: {exc}") from None
        finally:
            writer.close()
        try:
            answer = json.loads(data or b"{}")
        except ValueError:
            raise Unreachable(f"{endpoint.url}: HTTP {status} with a body that is not JSON") from None
        if not isinstance(answer, dict):
            raise Unreachable(f"{endpoint.url}: HTTP {status} with an unexpected body")
        if "error" in answer and isinstance(answer["error"], (str, dict)):
            error = answer["error"]
            if isinstance(error, dict):  # a stream's error message
                raise EtcdError(str(error.get("message", error)), int(error.get("grpc_code", error.get("code", 0))))
            raise EtcdError(str(answer.get("message") or error), int(answer.get("code", 0)))
        if status != 200:
            raise Unreachable(f"{endpoint.url}: HTTP {status}")
        # streaming endpoints (lease keep-alive) wrap their one answer in "result"
        result = answer.get("result", answer)
        return result if isinstance(result, dict) else {}

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, endpoint: Endpoint,
                        path: str, body: dict[str, Any],
                        headers: dict[str, str]) -> tuple[int, AsyncIterator[bytes]]:
        payload = json.dumps(body).encode()
        lines = [f"POST {path} HTTP/1.1", f"Host: {endpoint.host}:{endpoint.port}",
                 "Content-Type: application/json", f"Content-Length: {len(payload)}", "Connection: close",
                 # etcd refuses (and ends our watches) while the member has no leader
                 "Grpc-Metadata-hasleader: true"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        status_line = await reader.readline()
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise Unreachable(f"{endpoint.url}: not an HTTP answer: {status_line[:80]!r}")
        status = int(parts[1])
        response_headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES):
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            response_headers[name.strip().lower()] = value.strip()
        return status, _body(reader, response_headers)


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise asyncio.IncompleteReadError(b"", None)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size > MAX_BODY_BYTES:
                raise ValueError("chunk too large")
            if size == 0:
                await reader.readline()
                return
            chunk = await reader.readexactly(size)
            await reader.readexactly(2)
            yield chunk
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_BODY_BYTES:
            raise ValueError("body too large")
        yield await reader.readexactly(length)
    else:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            yield chunk
