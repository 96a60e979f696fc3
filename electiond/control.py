"""The control socket: one JSON request per line, one JSON reply per line.

Request: {"cmd": "status", "args": {...}}. Reply: {"ok": true, "result": ...}
or {"ok": false, "error": "...", "code": ...}: code "permission" (a
mutating command from a client that is neither root nor in ``admin_group``,
checked with SO_PEERCRED), "bad_request" (unknown command or argument),
"busy" (see below), or none (the command was refused: not the leader...).
A handler may return an awaitable (pause, transfer --wait, lock.acquire):
the reply waits for it; other connections are served meanwhile, and a client
that hangs up while it waits cancels it (a barrier participant that died is
not counted). A handler may also return an async iterator (members.watch,
config.watch): the connection then streams one {"ok": true, "event": ...}
line per item until the iterator ends (a final {"ok": false, ...} line if it
failed) and is closed; a streaming connection is not idle, but it still
holds one of the ``max_connections`` slots. Refused coordination requests
carry the CoordError ``code`` (not_acquired, lock_lost, version_mismatch,
unavailable, unsupported).

Clients are bounded so that they cannot use up the daemon's descriptors (a
daemon out of descriptors cannot start its promote hook): at most
``max_connections`` at once — one more is answered with a single line
``{"ok": false, "code": "busy", ...}`` and closed at once — and a connection
that sends no full request within ``idle_timeout_s`` is closed.

The server accepts on its own listening socket (``loop.add_reader``) rather
than through ``asyncio.start_unix_server``: a connection beyond the cap is
answered and closed inside the accept call, so it never becomes a transport
or a task. Through the loop's server, every connection accepted in one burst
held its descriptor until its task ran: uvloop 0.17 (Debian 12) held 490 for
1000 clients against a cap of 64, and its libuv, out of descriptors, closed
waiting clients without a word. Here, out of descriptors, accepting pauses
for ``ACCEPT_RETRY_S`` and the kernel's listen backlog holds the clients.
"""

from __future__ import annotations

import asyncio
import grp
import inspect
import json
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from electiond.coord.commands import COORD_COMMANDS, COORD_MUTATING
from electiond.fdreserve import is_exhaustion
from electiond.protocols.base import CommandError

log = logging.getLogger("electiond.control")
MAX_REQUEST_BYTES = 64 * 1024
MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 10.0
# a flood of refused connections must not flood the journal too
REFUSAL_LOG_INTERVAL_S = 10.0
# clients waiting in the kernel beyond those accepted (asyncio's own default)
LISTEN_BACKLOG = 100
# accepts per wake-up of the listening socket. One, so that the loop runs the
# protocol (and the connections already taken) between accepts: with 64, fifty
# clients that reconnect for every request made a leader on a loaded two-core
# machine lose its lease, 9-51 times in 10 s (scripts/bench_control_load.py);
# with one, none, at the same requests per second as the loop's own server
ACCEPT_BATCH = 1
# out of descriptors: how long to leave waiting clients in the backlog
ACCEPT_RETRY_S = 0.1
# at the cap: how long the next clients wait in the backlog for a served
# connection to end before they are refused. A client that read its reply and
# closed still counts until its task reads the end of stream: refusing at once
# turned 50 clients that reconnect for every request into thousands of
# refusals (and retries) a second, enough to starve the lease renewals
WAIT_AT_CAP_S = 0.05
BUSY = "busy"  # the "code" of a refusal; electionctl treats it as "cannot reach the daemon"
PERMISSION = "permission"
BAD_REQUEST = "bad_request"
# commands that change what the cluster does: root or [control] admin_group only
# and the coordination commands a script could block other hosts with (coord/commands.py)
# leader.supervise: a registered run-as-leader delays hand-overs (by a bounded time)
MUTATING = frozenset({"transfer", "stepdown", "pause", "resume", "leader.supervise"}) | COORD_MUTATING


class BadRequest(CommandError):
    """The request itself is wrong (unknown command, node or argument)."""


def peer_credentials(sock: socket.socket | None) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    if sock is None:
        return None
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def may_mutate(uid: int, gid: int, admin_group: str | None) -> tuple[bool, str]:
    """Root, the daemon's own user, or a member of admin_group (primary or
    supplementary, looked up now: a user added to the group needs no restart)."""
    if uid == 0 or uid == os.geteuid():
        return True, ""
    if admin_group is None:
        return False, "only root may do this (set [control] admin_group to allow a group)"
    try:
        group = grp.getgrnam(admin_group)
    except KeyError:
        return False, f"[control] admin_group {admin_group!r} does not exist"
    if gid == group.gr_gid:
        return True, ""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False, f"uid {uid} is unknown and not in group {admin_group!r}"
    if user.pw_name in group.gr_mem or group.gr_gid in os.getgrouplist(user.pw_name, user.pw_gid):
        return True, ""
    return False, f"user {user.pw_name} is neither root nor in group {admin_group!r}"


class ControlServer:
    def __init__(
        self,
        path: str,
        mode: int,
        handler: Callable[[str, dict[str, Any]], Any],
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        admin_group: str | None = None,
    ) -> None:
        self.path = path
        self.mode = mode
        self._handler = handler
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._retry: asyncio.TimerHandle | None = None
        self._waiting_at_cap = False  # paused until a connection ends or WAIT_AT_CAP_S passed
        self._rechecked_cap = False  # waited at the cap already: refuse until a connection ends
        self._tasks: set[asyncio.Task[None]] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.connections = 0  # open now
        self.refused = 0  # turned away at the cap, since start
        self.idle_closed = 0  # closed for idling, since start
        self._refusal_logged_at: float | None = None
        self.accept_exhausted = 0  # accepts that failed for want of descriptors, since start
        self._exhaustion_logged_at: float | None = None
        self.admin_group = admin_group
        self.permission_refused = 0

    def stats(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "max_connections": self.max_connections,
            "refused": self.refused,
            "idle_closed": self.idle_closed,
            "permission_refused": self.permission_refused,
            "accept_exhausted": self.accept_exhausted,
        }

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket from a crashed daemon
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)  # never world-accessible, even for an instant
            try:
                listener.bind(self.path)
            finally:
                os.umask(old_umask)
            os.chmod(self.path, self.mode)
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._resume_accepting()

    async def stop(self) -> None:
        if self._listener is not None:
            self._pause_accepting()
            self._listener.close()
            self._listener = None
            # an idle client (a watch loop) would otherwise hold the stop up
            for writer in list(self._clients):
                writer.close()
            if self._tasks:
                # a reply still waiting for its handler (transfer --wait) is given up
                _, pending = await asyncio.wait(set(self._tasks), timeout=1.0)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=1.0)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _recheck_cap(self) -> None:
        self._waiting_at_cap = False
        self._rechecked_cap = True
        self._resume_accepting()

    def _connection_ended(self) -> None:
        self.connections -= 1
        self._rechecked_cap = False
        if self._waiting_at_cap and self.connections < self.max_connections:
            self._waiting_at_cap = False
            self._pause_accepting()  # drops the timer
            self._resume_accepting()

    def _resume_accepting(self) -> None:
        self._retry = None
        if self._listener is not None and self._loop is not None and not self._accepting:
            self._loop.add_reader(self._listener.fileno(), self._accept_ready)
            self._accepting = True

    def _pause_accepting(self) -> None:
        """Stop accepting (and drop any timer that would resume it)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._accepting and self._listener is not None and self._loop is not None:
            self._loop.remove_reader(self._listener.fileno())
        self._accepting = False

    def _accept_ready(self) -> None:
        assert self._listener is not None and self._loop is not None
        for _ in range(ACCEPT_BATCH):
            if self.connections >= self.max_connections and not self._rechecked_cap:
                # not accepted yet, so the waiting clients hold no descriptor of ours
                self._pause_accepting()
                self._waiting_at_cap = True
                self._retry = self._loop.call_later(WAIT_AT_CAP_S, self._recheck_cap)
                return
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if is_exhaustion(exc):
                    self._out_of_descriptors(exc)
                    return
                # ECONNABORTED and the like: that client is gone, the next may not be
                log.debug("control: accept failed: %s", exc)
                continue
            if self.connections >= self.max_connections:
                self._refuse(conn)
                continue
            self.connections += 1
            task = self._loop.create_task(self._serve_socket(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _out_of_descriptors(self, exc: OSError) -> None:
        """Leave the waiting clients in the kernel's backlog and try again soon:
        the listening socket stays readable, so retrying at once would spin."""
        self.accept_exhausted += 1
        now = time.monotonic()
        if self._exhaustion_logged_at is None or now - self._exhaustion_logged_at >= REFUSAL_LOG_INTERVAL_S:
            self._exhaustion_logged_at = now
            log.warning("control: cannot accept connections: %s; retrying every %gs", exc, ACCEPT_RETRY_S)
        self._pause_accepting()
        assert self._loop is not None
        self._retry = self._loop.call_later(ACCEPT_RETRY_S, self._resume_accepting)

    async def _answer(self, line: bytes, creds: tuple[int, int, int] | None,
                      reader: asyncio.StreamReader | None = None) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError("request must be an object with a string 'cmd'")
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("'args' must be an object")
        except ValueError as exc:
            return {"ok": False, "code": BAD_REQUEST, "error": f"bad request: {exc}"}
        if request["cmd"] in MUTATING:
            if creds is None:
                allowed, why = False, "cannot tell who is asking (no SO_PEERCRED)"
            else:
                allowed, why = may_mutate(creds[1], creds[2], self.admin_group)
            if not allowed:
                self.permission_refused += 1
                log.warning("control: refused %s from pid %s uid %s: %s", request["cmd"],
                            creds and creds[0], creds and creds[1], why)
                return {"ok": False, "code": PERMISSION, "error": f"permission denied: {why}"}
        try:
            result = self._handler(request["cmd"], args)
            if inspect.isawaitable(result):
                # only coordination requests: another client may pipeline its next request
                result = await self._unless_hung_up(result, reader if request["cmd"] in COORD_COMMANDS else None)
            if hasattr(result, "__anext__"):
                return {"ok": True, "stream": result}
            return {"ok": True, "result": result}
        except Exception as exc:
            return self._error_reply(request["cmd"], exc)

    @staticmethod
    def _error_reply(cmd: str, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, BadRequest):
            return {"ok": False, "code": BAD_REQUEST, "error": str(exc)}
        if isinstance(exc, CommandError):
            code = getattr(exc, "code", None)
            return {"ok": False, "error": str(exc), **({"code": code} if isinstance(code, str) else {})}
        log.error("control command %s failed", cmd, exc_info=exc)  # a bug must not kill the daemon: report it
        return {"ok": False, "error": f"internal error: {exc}"}

    async def _unless_hung_up(self, awaitable: Any, reader: asyncio.StreamReader | None) -> Any:
        """The awaitable's result; cancelled if the client closes first."""
        task = asyncio.ensure_future(awaitable)
        if reader is None:
            return await task
        eof = asyncio.ensure_future(reader.read(1))  # a well-behaved client sends nothing more while waiting
        try:
            await asyncio.wait({task, eof}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
                raise ConnectionResetError("the client hung up")
            return task.result()
        finally:
            eof.cancel()
            if not task.done():
                task.cancel()

    async def _stream(self, stream: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      cmd: str) -> None:
        """One line per item; ends when the iterator does or the client leaves."""
        try:
            while True:
                try:
                    item = await self._unless_hung_up(stream.__anext__(), reader)
                except StopAsyncIteration:
                    return
                except ConnectionResetError:
                    return
                except Exception as exc:
                    writer.write(json.dumps(self._error_reply(cmd, exc)).encode() + b"\n")
                    return
                writer.write(json.dumps({"ok": True, "event": item}, default=str).encode() + b"\n")
                await asyncio.wait_for(writer.drain(), self.idle_timeout_s)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.debug("closing a stream for %s", cmd, exc_info=True)

    def _refuse(self, conn: socket.socket) -> None:
        self.refused += 1
        now = time.monotonic()
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL_S:
            self._refusal_logged_at = now
            log.warning("control: refusing connections: %d open, the limit ([control] max_connections); "
                        "%d refused so far", self.connections, self.refused)
        reply = {"ok": False, "code": BUSY,
                 "error": f"too many control connections ({self.max_connections} open); try again later"}
        try:
            # a fresh socket's send buffer holds one line: this never blocks, and the
            # line stays readable for the client after the close
            conn.send(json.dumps(reply).encode() + b"\n", socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
        except OSError:
            pass  # the client is gone already
        finally:
            conn.close()

    async def _serve_socket(self, conn: socket.socket) -> None:
        try:
            # accept() hands back a blocking socket: made non-blocking before
            # the loop writes replies to it, or a slow reader could stall the loop
            conn.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=MAX_REQUEST_BYTES)
        except BaseException as exc:
            self._connection_ended()
            conn.close()
            if not isinstance(exc, OSError):
                raise
            log.debug("control: cannot serve an accepted connection: %s", exc)
            return
        await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one accepted connection (already counted in ``connections``)."""
        self._clients.add(writer)
        creds = peer_credentials(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), self.idle_timeout_s)
                except TimeoutError:
                    self.idle_closed += 1
                    log.debug("control: closing a connection idle for %.1fs", self.idle_timeout_s)
                    writer.write(json.dumps({"ok": False, "error": f"no request within {self.idle_timeout_s:g}s; "
                                             "closing"}).encode() + b"\n")
                    break
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(b'{"ok": false, "error": "request too long"}\n')
                    break
                if not line:
                    break
                try:
                    reply = await self._answer(line, creds, reader)
                except ConnectionResetError:
                    break  # it hung up while its request waited: nobody to answer
                if "stream" in reply:
                    await self._stream(reply["stream"], reader, writer, json.loads(line)["cmd"])
                    break
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                # a client that stops reading its replies is idle too
                await asyncio.wait_for(writer.drain(), self.idle_timeout_s)
        except TimeoutError:
            self.idle_closed += 1
            log.debug("control: dropping a client that does not read its replies")
            writer.transport.abort()  # its unread replies would keep the socket open
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()
            self._connection_ended()
