"""The control socket: one JSON request per line, one JSON reply per line.

Request: {"cmd": "status", "args": {...}}. Reply: {"ok": true, "result": ...}
or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from electiond.protocols.base import CommandError

log = logging.getLogger("electiond.control")
MAX_REQUEST_BYTES = 64 * 1024


class ControlServer:
    def __init__(self, path: str, mode: int, handler: Callable[[str, dict[str, Any]], Any]) -> None:
        self.path = path
        self.mode = mode
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket from a crashed daemon
        old_umask = os.umask(0o177)  # never world-accessible, even for an instant
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_REQUEST_BYTES)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, self.mode)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # an idle client (a watch loop) would otherwise hold the stop up:
            # since Python 3.12 wait_closed waits for every connection
            for writer in list(self._clients):
                writer.close()
            await self._server.wait_closed()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError("request must be an object with a string 'cmd'")
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("'args' must be an object")
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        try:
            return {"ok": True, "result": self._handler(request["cmd"], args)}
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not kill the daemon: report it
            log.exception("control command %s failed", request["cmd"])
            return {"ok": False, "error": f"internal error: {exc}"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(b'{"ok": false, "error": "request too long"}\n')
                    break
                if not line:
                    break
                reply = self._answer(line)
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()
