"""A lean asyncio HTTP/1.1 client for the network cores: one keep-alive connection pool per server.

Raw `asyncio.Protocol` (no dependency; runs on uvloop too), Content-Length, chunked and read-to-close
bodies, the body handed to a callback as it arrives, connect and whole-exchange timeouts.

Why not httpx: httpcore scans its whole pool per request and wakes the caller per body piece; here a
request costs one write, one future and one timer, and a streamed body is delivered from
`data_received` straight to the caller's callback, one call per socket read (all the chunks that
read brought, de-chunked and joined), without waking the awaiting task until the response ends.

`HTTPClient.start` sends without awaiting: called from a plain loop callback (not only from a task),
it writes the request at once when an idle connection is at hand, so a request taken from another
thread goes out in the callback that takes it instead of one loop iteration later, in a new task's
first step (behind every socket read of that iteration). The Exchange it returns is awaited for the
response and records when the request was written (`sent_ns`, for client-side queueing figures).

Errors (all `HTTPError`, each naming the URL): `ConnectError` (refused, unknown host, connect
timeout; its `TLSError` for a failed TLS handshake or certificate check), `ConnectionDropped` (closed
or reset before the response ended), `ProtocolError` (not a valid HTTP/1.1 response), `RequestTimeout`
(also a `TimeoutError`). An exception raised by the body callback ends the request with that same
exception. A request that fails on a keep-alive
connection taken idle from the pool before any byte of the response came back (the server closed
the idle connection just as it was picked) is sent once more on a new connection. Request headers
are never put in a message.

`HTTPClient.connect_ahead(n)` opens connections before they are needed (a benchmark's warm-up), so
the first timed requests are not each held up by a connect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import ssl as _ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: longest response head accepted (status line and headers)
MAX_HEAD_BYTES = 64 * 1024
#: longest chunk-size line accepted
MAX_CHUNK_LINE = 1024
#: chunk-size lines as servers write them (lowercase hex, no leading zeros) -> size, for the sizes SSE events
#: have: a dict lookup per chunk instead of int(line, 16); any other line takes int()
_HEX_SIZES = {b"%x" % n: n for n in range(1, 8192)}

BodyCallback = Callable[[bytes], None]

_HEAD, _LENGTH, _CHUNKED, _TO_EOF, _DONE = range(5)


class HTTPError(Exception):
    """A request that got no usable response. `url` names the server."""

    def __init__(self, url: str, message: str):
        super().__init__(message)
        self.url = url


class ConnectError(HTTPError):
    """The connection could not be opened (refused, unknown host, connect timeout)."""


class ConnectionDropped(HTTPError):
    """The connection closed or broke before the response ended."""


class ProtocolError(HTTPError):
    """The server's bytes are not a valid HTTP/1.1 response."""


class RequestTimeout(HTTPError, TimeoutError):
    """The whole exchange took longer than its timeout."""


class TLSError(ConnectError):
    """The TLS handshake failed: the server's certificate did not verify (`verify` True), or the two
    sides do not speak TLS alike (an https:// URL for a plain-http server, or the other way round)."""

    def __init__(self, url: str, message: str, *, verify: bool):
        super().__init__(url, message)
        self.verify = verify


@dataclass(slots=True)
class Response:
    """A finished response. `body` is empty when the body went to a callback (2xx with `on_body`)."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased; repeats joined by ", "
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class EndpointURL:
    """An OpenAI-compatible server's URL, parsed. `address` is how it is shown (scheme, host, port and
    the path prefix as given); `api` is the path the OpenAI routes hang from (`<api>/completions`,
    `<api>/models`); `root` the one `/health` hangs from (`<root>/health`)."""

    address: str
    origin: str
    scheme: str
    host: str
    port: int
    api: str
    root: str

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address literal (names are not resolved)."""
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_endpoint_url(text: str) -> EndpointURL:
    """`host:port` (http) or `http[s]://host[:port][/prefix]` -> EndpointURL; ValueError says what is wrong.

    The prefix is kept: a path ending in `/v1` is the API base itself (OpenAI's `base_url`
    convention: `https://gw.example.com/llm/v1` -> `/llm/v1/completions`, `/llm/health`); any other
    path is a prefix the `/v1` routes hang from (`http://h:8000/llm` -> `/llm/v1/completions`).
    Credentials in the URL, queries and fragments are refused."""
    raw = str(text).strip()
    has_scheme = "://" in raw
    parts = urlsplit(raw if has_scheme else "http://" + raw)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{raw!r}: expected host:port or an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{_without_userinfo(raw)}: credentials in a URL are not accepted (they would be shown "
                         "and logged); put the API key in --openai_api_key_file")
    if not parts.hostname:
        raise ValueError(f"{raw!r}: no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{raw!r}: bad port (expected 1..65535)") from None
    if port is None:
        if not has_scheme:
            raise ValueError(f"{raw!r} is not host:port (port 1..65535)")
        port = 443 if scheme == "https" else 80
    if not 1 <= port <= 65535:
        raise ValueError(f"{raw!r}: bad port {port} (expected 1..65535)")
    if parts.query or parts.fragment or raw.endswith(("?", "#")):
        raise ValueError(f"{raw!r}: a query or fragment is not accepted (expected scheme://host:port/prefix)")
    path = parts.path.rstrip("/")
    if path and (any(c.isspace() for c in path) or "//" in path):
        raise ValueError(f"{raw!r}: bad path prefix {path!r}")
    host = parts.hostname
    shown_host = f"[{host}]" if ":" in host else host
    origin = f"{scheme}://{shown_host}:{port}"
    if path.endswith("/v1"):
        api, root = path, path[:-3]
    else:
        api, root = path + "/v1", path
    return EndpointURL(address=origin + path, origin=origin, scheme=scheme, host=host, port=port, api=api,
                       root=root)


def _without_userinfo(raw: str) -> str:
    """`raw` with any user:password@ part masked (for messages)."""
    parts = urlsplit(raw if "://" in raw else "http://" + raw)
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc="***@" + netloc).geturl() if "@" in parts.netloc else raw


def split_url(url: str) -> tuple[str, str, int, bool]:
    """`http://host:port[/...]` -> (scheme, host, port, tls). Only the origin is used."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: expected an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError as err:
        raise ValueError(f"{url!r}: bad port ({err})") from None
    return parts.scheme, parts.hostname, port, tls


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    __slots__ = ("pool", "transport", "closed", "was_idle", "got_bytes", "_waiter", "_on_body", "_state",
                 "_buf", "_left", "_crlf", "_trailer", "_status", "_reason", "_headers", "_pieces",
                 "_keep_alive", "_no_body")

    def __init__(self, pool: HTTPClient):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.was_idle = False  # waited idle in the pool: the server may have closed it meanwhile
        self.got_bytes = False  # this exchange received something
        self._waiter: asyncio.Future | None = None
        self._state = _DONE

    # --- one exchange ------------------------------------------------------------------------------
    def start(self, waiter: asyncio.Future, data: bytes, on_body: BodyCallback | None, no_body: bool) -> None:
        self._waiter = waiter
        self._on_body = on_body
        self._no_body = no_body
        self._state = _HEAD
        self._buf = b""
        self._pieces: list[bytes] = []
        self.got_bytes = False
        self.transport.write(data)

    def abort(self) -> None:
        """Drop the connection (an exchange ended early: it cannot be reused)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, err: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self._state = _DONE
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(err)

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        self._state = _DONE
        if self._on_body is not None and 200 <= self._status < 300:
            body = b""
        else:
            body = b"".join(self._pieces)
        self._pieces = []
        self._on_body = None
        if self._keep_alive and not self.closed:
            self.was_idle = True
            self.pool._release(self)
        else:
            self.closed = True
            self.transport.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._reason, self._headers, body))

    # --- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes while idle (or after the response): unusable
            self.abort()
            return
        self.got_bytes = True
        try:
            self._feed(data)
        except HTTPError as err:
            self._fail(err)
        except Exception as err:  # from the body callback: ends this request with it
            self._fail(err)

    def eof_received(self) -> bool:
        if self._waiter is not None and self._state == _TO_EOF:
            self._deliver()
            self._keep_alive = False
            self._finish()
        self.closed = True  # never picked from the pool again (connection_lost comes later)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if self._waiter is not None:
            if self._state == _TO_EOF and exc is None:
                self._deliver_safely()
                return
            cause = f"{type(exc).__name__}: {exc}" if exc else "closed by the server"
            where = "before the response" if not self.got_bytes else "mid-response"
            self._fail(ConnectionDropped(self.pool.url, f"{cause}, {where}"))

    def _deliver_safely(self) -> None:
        try:
            self._deliver()
        except Exception as err:
            self._fail(err)
            return
        self._keep_alive = False
        self._finish()

    # --- parsing --------------------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        state = self._state
        if state == _CHUNKED:
            self._chunked(data)
        elif state == _LENGTH:
            left = self._left
            if len(data) >= left:
                if len(data) > left:
                    raise ProtocolError(self.pool.url, f"{len(data) - left} bytes after the response body")
                self._pieces.append(data)
                self._deliver()
                self._finish()
            else:
                self._left = left - len(data)
                self._pieces.append(data)
                self._deliver()
        elif state == _TO_EOF:
            self._pieces.append(data)
            self._deliver()
        elif state == _HEAD:
            buf = self._buf + data if self._buf else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ProtocolError(self.pool.url, f"response head longer than {MAX_HEAD_BYTES} bytes")
                self._buf = buf
                return
            self._buf = b""
            self._head(buf[:end])
            rest = buf[end + 4:]
            if self._state == _DONE:
                if rest:
                    raise ProtocolError(self.pool.url, f"{len(rest)} bytes after a response with no body")
                self._finish()
            elif self._state == _HEAD:  # an interim 1xx response: the real one follows
                if rest:
                    self._feed(rest)
            elif rest:
                self._feed(rest)
        else:
            raise ProtocolError(self.pool.url, "bytes after the end of the response")

    def _head(self, head: bytes) -> None:
        url = self.pool.url
        lines = head.split(b"\r\n")
        status_line = lines[0]
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise ProtocolError(url, f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(url, f"malformed header line: {line[:80]!r}")
            key = name.decode("latin-1").lower()
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError(url, "the server switched protocols (HTTP 101)")
            self._state = _HEAD  # 100 Continue, 103 Early Hints: wait for the final head
            return
        self._status = status
        self._reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        self._headers = headers
        conn = headers.get("connection", "").lower()
        if parts[0] == b"HTTP/1.0":
            self._keep_alive = "keep-alive" in conn
        else:
            self._keep_alive = "close" not in conn
        if self._no_body or status in (204, 304):
            self._state = _DONE
            return
        te = headers.get("transfer-encoding")
        if te is not None:
            if te.lower().rsplit(",", 1)[-1].strip() != "chunked":
                raise ProtocolError(url, f"unsupported Transfer-Encoding: {te!r}")
            self._state = _CHUNKED
            self._left = 0
            self._crlf = False
            self._trailer = False
            return
        cl = headers.get("content-length")
        if cl is not None:
            if not cl.isdigit():
                raise ProtocolError(url, f"bad Content-Length: {cl!r}")
            self._left = int(cl)
            self._state = _LENGTH if self._left else _DONE
            return
        self._state = _TO_EOF
        self._keep_alive = False

    def _chunked(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        pieces = self._pieces
        find = data.find
        pos, n = 0, len(data)
        left, crlf = self._left, self._crlf
        bulk = n > 256  # try the whole-chunks path once, at the first chunk boundary (after a chunk's rest)
        while pos < n:
            if left:  # inside a chunk's data
                end = pos + left
                if end > n:
                    pieces.append(data[pos:])
                    left -= n - pos
                    break
                pieces.append(data[pos:end])
                pos, left, crlf = end, 0, True
            if crlf:  # after a chunk's data
                if n - pos < 2:
                    self._buf = data[pos:]
                    break
                if not data.startswith(b"\r\n", pos):
                    raise ProtocolError(self.pool.url, "chunk data not followed by CRLF")
                pos += 2
                crlf = False
                continue
            if self._trailer:  # after the last chunk: trailer lines up to an empty one
                i = find(b"\r\n", pos)
                if i < 0:
                    if n - pos > MAX_HEAD_BYTES:
                        raise ProtocolError(self.pool.url, "chunked trailer too long")
                    self._buf = data[pos:]
                    break
                if i == pos:
                    if i + 2 != n:
                        raise ProtocolError(self.pool.url, f"{n - i - 2} bytes after the response body")
                    self._left, self._crlf = 0, False
                    self._deliver()
                    self._finish()
                    return
                pos = i + 2
                continue
            if bulk:
                bulk = False
                if n - pos > 256:
                    data = self._whole_chunks(data[pos:] if pos else data)
                    find = data.find
                    pos, n = 0, len(data)
                    continue
            i = find(b"\r\n", pos)  # a chunk-size line
            if i < 0:
                if n - pos > MAX_CHUNK_LINE:
                    raise ProtocolError(self.pool.url, "chunk-size line too long")
                self._buf = data[pos:]
                break
            try:
                size = int(data[pos:i], 16)
            except ValueError:
                size = self._size_with_extension(data[pos:i])
            if size < 0:
                raise ProtocolError(self.pool.url, f"bad chunk size line {data[pos:i][:40]!r}")
            pos = i + 2
            if size == 0:
                self._trailer = True
                continue
            end = pos + size
            if end + 2 <= n and data.startswith(b"\r\n", end):  # the whole chunk is here (the usual case)
                pieces.append(data[pos:end])
                pos = end + 2
            else:
                left = size
        self._left, self._crlf = left, crlf
        self._deliver()

    def _whole_chunks(self, data: bytes) -> bytes:
        """Many chunks at once (a read that brought many SSE events), without a Python step per chunk: split
        at every CRLF, and where each size line's number is the length of the piece after it, those pieces
        are exactly the chunks (a chunk whose data holds a CRLF, an extension, a partial or the last chunk
        breaks the match: then the byte-by-byte parse below takes what is left). Returns what is left."""
        parts = data.split(b"\r\n")
        tail = parts.pop()  # after the last CRLF: part of a size line or of a chunk's data ('' at a boundary)
        if len(parts) & 1:  # the last whole line is a size line whose data has not all come
            tail = parts.pop() + b"\r\n" + tail
        sizes, datas = parts[0::2], parts[1::2]
        if datas and not datas[-1]:  # the last chunk (size 0, then the empty line): left to the parse below
            tail = sizes.pop() + b"\r\n\r\n" + tail
            datas.pop()
        if not datas:
            return data
        lengths = list(map(len, datas))
        ok = list(map(_HEX_SIZES.get, sizes)) == lengths
        if not ok:  # uppercase hex, leading zeros, a long chunk
            try:
                ok = list(map(int, sizes, itertools.repeat(16))) == lengths
            except ValueError:
                ok = False
        if not ok or b"" in datas:  # a size-0 chunk before the end, or a mismatch: the parse below names it
            return data
        self._pieces.extend(datas)
        return tail

    def _size_with_extension(self, line: bytes) -> int:
        try:
            return int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise ProtocolError(self.pool.url, f"bad chunk size line {line[:40]!r}") from None

    def _deliver(self) -> None:
        """Hand what arrived to the body callback (2xx with a callback) in one call."""
        on_body = self._on_body
        if on_body is None or not 200 <= self._status < 300:
            return
        pieces = self._pieces
        if pieces:
            self._pieces = []
            on_body(pieces[0] if len(pieces) == 1 else b"".join(pieces))


class Exchange:
    """One request of an HTTPClient (from `start`): already written when an idle connection was at
    hand, else written when awaited. Await it once for the Response; `abort()` ends it early (needed
    only for one that will not be awaited). `sent_ns`: time.perf_counter_ns() when the request was
    last written (0 before; a request sent again on a new connection is timed from there)."""

    __slots__ = ("_client", "_loop", "_data", "_on_body", "_no_body", "_deadline", "_timeout_s", "_conn",
                 "_waiter", "_timer", "sent_ns")

    def __init__(self, client: HTTPClient, loop: asyncio.AbstractEventLoop, data: bytes,
                 on_body: BodyCallback | None, no_body: bool, deadline: float | None, timeout_s: float | None):
        self._client = client
        self._loop = loop
        self._data = data
        self._on_body = on_body
        self._no_body = no_body
        self._deadline = deadline
        self._timeout_s = timeout_s
        self._conn: _Connection | None = None
        self._waiter: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.sent_ns = 0

    def _send(self, conn: _Connection) -> None:
        """Write the request on `conn` (which carries nothing else) and start its deadline."""
        loop = self._loop
        waiter = loop.create_future()
        self._conn, self._waiter = conn, waiter
        if self._deadline is not None:
            self._timer = loop.call_at(self._deadline, self._client._expire, waiter, conn, self._timeout_s)
        self.sent_ns = time.perf_counter_ns()
        conn.start(waiter, self._data, self._on_body, self._no_body)

    def __await__(self):
        return self._wait().__await__()

    async def _wait(self) -> Response:
        for attempt in (0, 1):
            if self._conn is None:
                self._send(await self._client._acquire(self._loop, self._deadline, self._timeout_s))
            conn, waiter = self._conn, self._waiter
            try:
                return await waiter
            except ConnectionDropped:
                if attempt or not conn.was_idle or conn.got_bytes:
                    raise
                self._conn = None  # a stale keep-alive connection: once more on a new one
            except asyncio.CancelledError:
                self.abort()
                raise
            finally:
                self._stop_timer()
        raise AssertionError("unreachable")  # pragma: no cover

    def abort(self) -> None:
        """End the exchange now: a connection still carrying it is dropped (its response cannot be
        finished by anyone else). A no-op once the response has ended."""
        self._stop_timer()
        conn, waiter = self._conn, self._waiter
        if conn is None:
            return
        if conn._waiter is waiter:  # still on its connection (a cancelled task cancels the waiter only)
            conn._waiter = None
            conn.abort()
        elif waiter.done() and not waiter.cancelled():
            waiter.exception()  # retrieved: an abandoned failure is not logged as never retrieved

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class HTTPClient:
    """A keep-alive connection pool to one server (`http://host:port` or `https://...`).

    Bound to the event loop of its first request. `headers` go with every request (e.g.
    Authorization) and are never put in an error message. The caller caps concurrency (one
    connection per request in flight); at most `max_idle` idle connections are kept."""

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None, connect_timeout_s: float = 10.0,
                 max_idle: int = 1024, ssl_context: _ssl.SSLContext | None = None):
        scheme, host, port, tls = split_url(url)
        self.url = f"{scheme}://{host}:{port}" if ":" not in host else f"{scheme}://[{host}]:{port}"
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self._ssl = (ssl_context or _ssl.create_default_context()) if tls else None
        host_header = host if port == (443 if tls else 80) else f"{host}:{port}"
        if ":" in host:
            host_header = f"[{host}]" if port == (443 if tls else 80) else f"[{host}]:{port}"
        fixed = {"Host": host_header, "User-Agent": "llmlib-http1"}
        fixed.update(headers or {})
        for name, value in fixed.items():
            if "\r" in name or "\n" in name or "\r" in str(value) or "\n" in str(value):
                raise ValueError(f"header {name!r}: CR/LF are not allowed")
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._heads: dict[tuple[str, str], bytes] = {}
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._closed = False

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def num_connections(self) -> int:
        return len(self._all)

    @property
    def num_idle(self) -> int:
        return len(self._idle)

    async def aclose(self) -> None:
        """Close every connection (requests still running on them fail with ConnectionDropped)."""
        self._closed = True
        self._idle.clear()
        for conn in list(self._all):
            conn.abort()
        self._all.clear()

    # --- requests ---------------------------------------------------------------------------------
    async def get(self, path: str, *, timeout_s: float | None = None) -> Response:
        return await self.request("GET", path, timeout_s=timeout_s)

    async def post(self, path: str, body: bytes, *, on_body: BodyCallback | None = None,
                   timeout_s: float | None = None) -> Response:
        return await self.request("POST", path, body, on_body=on_body, timeout_s=timeout_s)

    async def request(self, method: str, path: str, body: bytes = b"", *, on_body: BodyCallback | None = None,
                      timeout_s: float | None = None) -> Response:
        """One exchange. With `on_body`, a 2xx body goes to it as it arrives (one call per socket
        read) and `Response.body` is empty; other bodies are buffered. `timeout_s` bounds the whole
        exchange, connecting included."""
        return await self.start(method, path, body, on_body=on_body, timeout_s=timeout_s)

    def start(self, method: str, path: str, body: bytes = b"", *, on_body: BodyCallback | None = None,
              timeout_s: float | None = None) -> Exchange:
        """`request` without awaiting, on the loop's thread (in a task or a plain callback): the request
        is written before this returns when an idle connection is at hand, else when the Exchange is
        awaited (after connecting). Await the Exchange once for the Response (the errors of `request`);
        an Exchange that will not be awaited must be `abort()`ed. Raises HTTPError if the client is
        closed, ValueError for a bad path."""
        if self._closed:
            raise HTTPError(self.url, "client closed")
        head = self._heads.get((method, path))
        if head is None:
            if " " in path or "\r" in path or "\n" in path or not path.startswith("/"):
                raise ValueError(f"path {path!r}: expected an absolute path without spaces")
            head = self._heads[(method, path)] = f"{method} {path} HTTP/1.1\r\n".encode() + self._fixed
        data = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body) if body or method == "POST" \
            else head + b"\r\n"
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        ex = Exchange(self, loop, data, on_body, method == "HEAD", deadline, timeout_s)
        conn = self._pop_idle()
        if conn is not None:
            ex._send(conn)
        return ex

    async def connect_ahead(self, n: int, *, parallel: int = 16) -> int:
        """Open connections until `n` are idle (at most `max_idle`), `parallel` connecting at a time
        (a burst of thousands would overflow the server's accept backlog). Returns how many are
        idle. Best effort: the first connect error stops it and is raised (the connections opened
        stay in the pool)."""
        loop = asyncio.get_running_loop()
        self._idle[:] = [c for c in self._idle if not c.closed]
        want = min(n, self.max_idle) - len(self._idle)
        if want <= 0:
            return len(self._idle)
        todo = iter(range(want))

        async def opener() -> None:
            for _ in todo:
                conn = await self._connect(loop, None, None)
                conn.was_idle = True
                self._release(conn)

        workers = [asyncio.ensure_future(opener()) for _ in range(min(parallel, want))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
        return len(self._idle)

    def _expire(self, waiter: asyncio.Future, conn: _Connection, timeout_s: float) -> None:
        if not waiter.done():
            conn._fail(RequestTimeout(self.url, f"no complete response within {timeout_s:g}s"))

    def _pop_idle(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float | None,
                       timeout_s: float | None) -> _Connection:
        conn = self._pop_idle()
        if conn is not None:
            return conn
        return await self._connect(loop, deadline, timeout_s)

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float | None,
                       timeout_s: float | None) -> _Connection:
        limit = self.connect_timeout_s
        if deadline is not None:
            limit = min(limit, deadline - loop.time())
        try:
            async with asyncio.timeout(max(limit, 0.0)):
                _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port,
                                                       ssl=self._ssl)
        except TimeoutError:
            if deadline is not None and limit < self.connect_timeout_s:
                raise RequestTimeout(self.url, f"no complete response within {timeout_s:g}s "
                                               "(still connecting)") from None
            raise ConnectError(self.url, f"connect timed out after {self.connect_timeout_s:g}s") from None
        except _ssl.SSLCertVerificationError as err:
            raise TLSError(self.url, f"TLS certificate of {self.host}:{self.port} did not verify: "
                                     f"{err.verify_message or err.reason or err}", verify=True) from err
        except _ssl.SSLError as err:
            raise TLSError(self.url, f"TLS handshake with {self.host}:{self.port} failed: {err.reason or err} "
                                     "(does the server speak TLS? check http:// vs https://)", verify=False) from err
        except OSError as err:
            raise ConnectError(self.url, f"cannot connect to {self.host}:{self.port}: {err}") from err
        if self._closed:
            conn.abort()
            raise HTTPError(self.url, "client closed")
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if self._closed or len(self._idle) >= self.max_idle:
            conn.closed = True
            conn.transport.close()
        else:
            self._idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        # a closed idle connection stays in _idle until picked (then skipped): no list scan here


__all__ = ["ConnectError", "ConnectionDropped", "EndpointURL", "Exchange", "HTTPClient", "HTTPError",
           "ProtocolError", "RequestTimeout", "Response", "TLSError", "is_loopback", "parse_endpoint_url",
           "split_url"]
