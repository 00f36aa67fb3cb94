"""A small HTTP/1.1 server on asyncio for the REST API, bounded in time, size and
connections.

Connections cost no thread while they wait: the event loop reads requests; only a
complete request takes a worker thread (the shared executor) to run the handler.
- At most `max_connections` open connections; the next one gets 503 and is closed.
- A request's head (request line and headers) must arrive within `timeout`
  seconds of its first byte, its body within `timeout` seconds more, and its
  response must be taken within `timeout`; an idle keep-alive connection is
  closed after `timeout`. Heads are limited to 64 KiB and 100 headers.
- Anything that is not HTTP/1.0 or 1.1 (HTTP/0.9, junk, HTTP/2 without upgrade)
  gets `400 Bad Request` (or 505) with a status line, then the connection closes.
- Bodies need Content-Length (no chunked uploads); above `max_body_bytes` the
  answer is 429 with TF Serving's "larger than max" text, sent before the body
  is read when the client asked `Expect: 100-continue`.
- A client that goes away mid-request costs one log line, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from http import HTTPStatus
from collections.abc import Callable

from serving.errors import one_line

log = logging.getLogger("serving")

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_REASONS = {499: "Client Closed Request"}


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes | bytearray = b""
    peer: str = ""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    close: bool = False
    extra_headers: list[tuple[str, str]] = field(default_factory=list)


class HttpError(Exception):
    """A request refused at the protocol level: answered with `{"error": ...}`."""

    def __init__(self, status: int, message: str, close: bool = True):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


def json_error(status: int, message: str, close: bool = False) -> Response:
    return Response(status, json.dumps({"error": message}).encode(), close=close)


class _Throttle:
    """At most one log line per `seconds` for a noisy kind of event, with a count."""

    def __init__(self, seconds: float = 5.0):
        self.seconds = seconds
        self.last = -1e9
        self.suppressed = 0

    def log(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self.last < self.seconds:
            self.suppressed += 1
            return
        more = f" (and {self.suppressed} more like it)" if self.suppressed else ""
        log.info(message + more, *args)
        self.last, self.suppressed = now, 0


class _Connection:
    __slots__ = ("writer", "idle")

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.idle = True


class HttpServer:
    def __init__(
        self,
        handler: Callable[[Request], Response],
        executor: Executor,
        max_body_bytes: int,
        timeout: float = 30.0,
        max_connections: int = 256,
    ):
        self.handler = handler
        self.executor = executor
        self.max_body_bytes = max_body_bytes
        self.timeout = timeout
        self.max_connections = max_connections
        self._connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._closing = False
        self._refusals = _Throttle()

    async def bind(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._serve,
            host,
            port,
            limit=MAX_HEAD_BYTES,
            start_serving=False,
            reuse_address=True,
            backlog=128,
        )

    async def start(self) -> None:
        await self._server.start_serving()

    async def stop(self, grace: float) -> None:
        """Stops accepting, closes idle connections now and busy ones after `grace`."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for connection in list(self._connections):
                if connection.idle:
                    connection.writer.close()
            if not self._connections:
                break
            await asyncio.sleep(0.05)
        for connection in list(self._connections):
            transport = connection.writer.transport
            if transport is not None:
                transport.abort()

    # ---- one connection ---------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        if self._closing or len(self._connections) >= self.max_connections:
            self._refusals.log(
                "REST: refused a connection from %s: %d connections open", peer, len(self._connections)
            )
            await self._write(
                writer,
                json_error(503, "Too many open connections; try again later", close=True),
                head_only=False,
            )
            await self._close(writer)
            return
        connection = _Connection(writer)
        self._connections.add(connection)
        try:
            await self._requests(reader, writer, connection, peer)
        except HttpError as err:
            log.info("REST %d from %s: %s", err.status, peer, one_line(err.message))
            await self._write(writer, json_error(err.status, err.message, close=True), False)
        except asyncio.IncompleteReadError:
            log.info("REST: %s closed the connection in the middle of a request", peer)
        except (ConnectionError, TimeoutError, OSError) as err:
            log.info("REST: connection from %s lost: %s", peer, type(err).__name__)
        except asyncio.CancelledError:
            raise
        except Exception:  # a server fault, not the client's: keep serving
            log.exception("REST: connection from %s failed", peer)
        finally:
            self._connections.discard(connection)
            await self._close(writer)

    async def _requests(self, reader, writer, connection: _Connection, peer: str) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            connection.idle = True
            try:
                first = await asyncio.wait_for(reader.readexactly(1), self.timeout)
            except asyncio.TimeoutError:
                return  # idle keep-alive connection: close quietly
            except asyncio.IncompleteReadError:
                return  # the client closed between requests
            connection.idle = False
            request = await self._read_request(reader, writer, first, peer)
            if request is None:
                return
            keep_alive = _keep_alive(request)
            response = await loop.run_in_executor(self.executor, self.handler, request)
            keep_alive = keep_alive and not response.close and not self._closing
            response.close = not keep_alive
            if not await self._write(
                writer, response, head_only=request.method == "HEAD", http10=request.version == "HTTP/1.0"
            ):
                return
            if not keep_alive:
                return

    async def _read_request(self, reader, writer, first: bytes, peer: str) -> Request | None:
        deadline = time.monotonic() + self.timeout

        async def line() -> bytes:
            remaining = deadline - time.monotonic()
            try:
                return await asyncio.wait_for(reader.readuntil(b"\n"), max(remaining, 0.001))
            except asyncio.TimeoutError:
                raise HttpError(408, f"request head not received within {self.timeout:g} s")
            except asyncio.LimitOverrunError:
                raise HttpError(431, "request head too large")

        request_line = first + await line()
        blank_lines = 0
        while request_line in (b"\r\n", b"\n"):  # stray line breaks between requests
            blank_lines += 1
            if blank_lines > 8:
                raise HttpError(400, "Bad request line")
            request_line = await line()
        method, target, version = _parse_request_line(request_line)
        headers, size = {}, len(request_line)
        while True:
            raw = await line()
            size += len(raw)
            if size > MAX_HEAD_BYTES or len(headers) >= MAX_HEADERS:
                raise HttpError(431, "request head too large")
            if raw in (b"\r\n", b"\n"):
                break
            text = raw.decode("latin-1").rstrip("\r\n")
            name, sep, value = text.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise HttpError(400, "Bad request header")
            name, value = name.lower(), value.strip(" \t")
            if name in headers and name == "content-length" and headers[name] != value:
                raise HttpError(400, "conflicting Content-Length headers")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        request = Request(method, target, version, headers, peer=peer)
        if "transfer-encoding" in headers:
            raise HttpError(400, "chunked request bodies are not supported: send Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit() or len(length_text) > 18:
            raise HttpError(400, "Content-Length is not a number")
        length = int(length_text)
        expects_continue = headers.get("expect", "").lower() == "100-continue"
        if length > self.max_body_bytes:
            message = f"Received message larger than max ({length} vs. {self.max_body_bytes})"
            if expects_continue or length > 4 * self.max_body_bytes:
                raise HttpError(429, message)  # answer now, never read that body
            await self._discard(reader, length)  # read it so the client sees the answer
            log.info("REST 429 %s %s from %s: %s", method, one_line(target, 100), peer, message)
            await self._write(writer, json_error(429, message, close=True), head_only=method == "HEAD")
            return None
        if expects_continue and length and version == "HTTP/1.1":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.body = await self._read_body(reader, length)
        return request

    async def _read_body(self, reader, length: int) -> bytearray:
        body = bytearray(length)
        view = memoryview(body)
        deadline = time.monotonic() + self.timeout
        done = 0
        while done < length:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HttpError(408, f"request body not received within {self.timeout:g} s")
            try:
                chunk = await asyncio.wait_for(reader.read(min(length - done, 1 << 20)), remaining)
            except asyncio.TimeoutError:
                raise HttpError(408, f"request body not received within {self.timeout:g} s")
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(view[:done]), length)
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
        return body

    async def _discard(self, reader, length: int) -> None:
        deadline = time.monotonic() + self.timeout
        while length > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HttpError(408, f"request body not received within {self.timeout:g} s")
            try:
                chunk = await asyncio.wait_for(reader.read(min(length, 1 << 20)), remaining)
            except asyncio.TimeoutError:
                raise HttpError(408, f"request body not received within {self.timeout:g} s")
            if not chunk:
                raise asyncio.IncompleteReadError(b"", length)
            length -= len(chunk)

    async def _write(
        self, writer: asyncio.StreamWriter, response: Response, head_only: bool, http10: bool = False
    ) -> bool:
        """Sends a response within `timeout`; False when the client is gone or too slow."""
        status = int(response.status)
        try:
            reason = _REASONS.get(status) or HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        head = [
            f"HTTP/1.1 {status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        head += [f"{name}: {value}" for name, value in response.extra_headers]
        if response.close:
            head.append("Connection: close")
        elif http10:
            head.append("Connection: keep-alive")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        try:
            writer.write(data if head_only else data + response.body)
            await asyncio.wait_for(writer.drain(), self.timeout)
            return True
        except asyncio.TimeoutError:
            log.info("REST: %s did not read its response within %g s; closing", _peer(writer), self.timeout)
        except (ConnectionError, OSError):
            log.info("REST: %s went away before its response was sent", _peer(writer))
        return False

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            transport = writer.transport
            if transport is not None:
                transport.abort()


def _parse_request_line(raw: bytes) -> tuple[str, str, str]:
    text = raw.decode("latin-1").rstrip("\r\n")
    parts = text.split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise HttpError(400, "Bad request line")
    method, target, version = parts
    match = _VERSION.fullmatch(version)
    if not match:
        raise HttpError(400, "Bad request line")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(505, f"{version} is not supported: use HTTP/1.1")
    return method, target, version


def _keep_alive(request: Request) -> bool:
    tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
