"""Tests of the lean HTTP/1.1 client on 127.0.0.1: against the project's mock OpenAI server (keep-alive,
Content-Length and chunked SSE bodies) and small raw-socket servers that misbehave (refuse, drop
mid-response, answer garbage, never answer, close idle keep-alive connections); every exchange bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import pytest

from llmlib.http1 import (
    ConnectError,
    ConnectionDropped,
    HTTPClient,
    ProtocolError,
    RequestTimeout,
    split_url,
)
from tests.servers.mock_openai_server import MockOpenAIServer, MockOptions, output_ids

pytestmark = pytest.mark.timeout(30)


def run(coro):
    async def bounded():
        async with asyncio.timeout(15):
            return await coro
    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def raw_server(handle):
    """A loopback server whose connections go to `handle(reader, writer, index)`; yields its URL."""
    count = [0]
    tasks = set()

    async def on_conn(reader, writer):
        count[0] += 1
        tasks.add(asyncio.current_task())
        try:
            await handle(reader, writer, count[0])
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", count
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()


async def read_request(reader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head + body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- against the mock ---------------------------------------------------------------------------------
@pytest.fixture
def mock():
    with MockOpenAIServer(MockOptions(output_tokens=40)) as server:
        yield server


def test_keep_alive_json_and_streamed_sse(mock):
    async def main():
        async with HTTPClient(f"http://{mock.url}") as client:
            r = await client.get("/v1/models")
            assert r.status == 200 and r.json()["data"][0]["id"] == "mock-model"
            body = json.dumps({"prompt": [1, 2], "max_tokens": 5, "return_token_ids": True}).encode()
            r = await client.post("/v1/completions", body)
            assert r.json()["choices"][0]["token_ids"] == output_ids([1, 2], 5, 1000)
            pieces = []
            body = json.dumps({"prompt": [3], "stream": True, "return_token_ids": True}).encode()
            r = await client.post("/v1/completions", body, on_body=pieces.append)
            assert r.status == 200 and r.body == b"" and r.headers["content-type"] == "text/event-stream"
            events = b"".join(pieces).split(b"\n\n")
            assert events[-2] == b"data: [DONE]" and len(events) == 40 + 2
            ids = [json.loads(e[6:])["choices"][0]["token_ids"][0] for e in events[:-2]]
            assert ids == output_ids([3], 40, 1000)
            assert client.num_connections == 1  # three requests, one connection
            r = await client.get("/nowhere")  # an error status: its body is buffered, the connection kept
            assert r.status == 404 and b"no route" in r.body and client.num_connections == 1
    run(main())


def test_concurrent_requests_use_one_connection_each_and_keep_them(mock):
    async def main():
        async with HTTPClient(f"http://{mock.url}") as client:
            body = json.dumps({"prompt": [1], "stream": True}).encode()
            for _ in range(3):
                rs = await asyncio.gather(*[client.post("/v1/completions", body, on_body=lambda d: None)
                                            for _ in range(8)])
                assert [r.status for r in rs] == [200] * 8
            assert client.num_connections == 8 and client.num_idle == 8
    run(main())


# --- misbehaving servers ------------------------------------------------------------------------------
def test_connection_refused_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"

    async def main():
        async with HTTPClient(url) as client:
            with pytest.raises(ConnectError) as info:
                await client.get("/health")
            assert info.value.url == url and "cannot connect" in str(info.value)
    run(main())


def test_chunk_splits_extensions_trailers_and_interim_responses():
    body = b"data: one\n\ndata: two\n\n"

    async def handle(reader, writer, _):
        await read_request(reader)
        wire = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\ndata:\r\n" + b"%x\r\n%s\r\n" % (len(body) - 5, body[5:]) + b"0\r\nX-Trailer: y\r\n\r\n")
        for i in range(len(wire)):  # one byte per write: every split the parser can meet
            writer.write(wire[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"cd")
        await writer.drain()
        await reader.read()

    async def main():
        async with raw_server(handle) as (url, _), HTTPClient(url) as client:
            got = []
            r = await client.post("/x", b"{}", on_body=got.append)
            assert r.status == 200 and b"".join(got) == body
            r = await client.get("/y")
            assert r.body == b"abcd" and client.num_connections == 1
    run(main())


def _chunked_wire(rng, n: int) -> tuple[bytes, bytes]:
    """(a chunked 200 response of n SSE-sized chunks, some holding CRLFs, extensions, upper-case sizes or
    leading zeros, a few over 8 KiB, its body)."""
    body, wire = [], [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    for i in range(n):
        long = rng.random() < 0.02  # over the sizes looked up in a table (8191 bytes)
        data = b"data: {\"i\":%d,\"t\":\"%s\"}\n\n" % (i, b"x" * rng.randrange(8180 if long else 0,
                                                                             8400 if long else 60))
        kind = rng.random()
        if kind < 0.03:
            data = data.replace(b"\n\n", b"\r\n\r\n")  # CRLFs inside a chunk's data
        elif kind < 0.05:
            data = data.replace(b"\n\n", b"\r\n\n")
        size = b"%x" % len(data)
        if 0.05 <= kind < 0.1:
            size += b";ext=1"
        elif 0.1 <= kind < 0.2:
            size = size.upper()
        elif 0.2 <= kind < 0.25:
            size = b"00" + size  # leading zeros
        body.append(data)
        wire.append(size + b"\r\n" + data + b"\r\n")
    wire.append(b"0\r\nX-Trailer: y\r\n\r\n" if rng.random() < 0.5 else b"0\r\n\r\n")
    return b"".join(wire), b"".join(body)


@pytest.mark.parametrize("seed", range(6))
def test_many_chunks_per_read_any_split(seed):
    """Reads that bring many chunks at once (de-chunked without a Python step per chunk where they line up)
    give the same body as one byte at a time, whatever the splits."""
    import random
    rng = random.Random(seed)
    wires = [_chunked_wire(rng, rng.randrange(1, 300)) for _ in range(4)]

    async def handle(reader, writer, _):
        for wire, _ in wires:
            await read_request(reader)
            pos = 0
            while pos < len(wire):
                step = rng.choice([1, 7, 300, 2000, 9000, len(wire)])
                writer.write(wire[pos:pos + step])
                pos += step
                await writer.drain()
                await asyncio.sleep(0)
        await reader.read()

    async def main():
        async with raw_server(handle) as (url, _), HTTPClient(url) as client:
            for _, body in wires:
                got = []
                r = await client.post("/x", b"{}", on_body=got.append)
                assert r.status == 200 and b"".join(got) == body
            assert client.num_connections == 1
    run(main())


@pytest.mark.parametrize("bad, match", [(b"5\r\nabcdefg\r\n", "not followed by CRLF"),
                                        (b"zz\r\nab\r\n", "bad chunk size"),
                                        (b"0\r\n\r\n", "bytes after the response body")])
def test_many_chunks_in_one_read_with_a_bad_one_in_the_middle(bad, match):
    good = b"".join(b"%x\r\n%s\r\n" % (len(d), d) for d in [b"data: {\"a\":1}\n\n"] * 40)
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + good + bad + good + b"0\r\n\r\n"

    async def handle(reader, writer, _):
        await read_request(reader)
        writer.write(wire)
        await writer.drain()
        await reader.read()

    async def main():
        async with raw_server(handle) as (url, _), HTTPClient(url) as client:
            with pytest.raises(ProtocolError, match=match):
                await client.post("/x", b"{}", on_body=lambda data: None)
    run(main())


def test_body_to_the_end_of_the_connection():
    async def handle(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")
        await writer.drain()
        writer.close()

    async def main():
        async with raw_server(handle) as (url, _), HTTPClient(url) as client:
            r = await client.get("/")
            assert r.body == b"part one, part two" and client.num_idle == 0
    run(main())


@pytest.mark.parametrize("wire, match", [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", "not followed by CRLF"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabcdef", "bytes after the response body"),
])
def test_malformed_responses(wire, match):
    async def handle(reader, writer, _):
        await read_request(reader)
        writer.write(wire)
        await writer.drain()
        await reader.read()

    async def main():
        async with raw_server(handle) as (url, _), HTTPClient(url) as client:
            with pytest.raises(ProtocolError, match=match) as info:
                await client.get("/")
            assert info.value.url == url and client.num_idle == 0
    run(main())


@pytest.mark.parametrize("after", [b"", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"])
def test_dropped_before_and_mid_response(after):
    async def handle(reader, writer, _):
        await read_request(reader)
        writer.write(after)
        await writer.drain()
        writer.transport.abort()

    async def main():
        async with raw_server(handle) as (url, _), HTTPClient(url) as client:
            with pytest.raises(ConnectionDropped, match="mid-response" if after else "before the response"):
                await client.post("/", b"{}", on_body=lambda d: None)
    run(main())


def test_timeout_covers_the_whole_exchange():
    async def handle(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")  # then nothing
        await writer.drain()
        await reader.read()

    async def main():
        async with raw_server(handle) as (url, _), HTTPClient(url) as client:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(RequestTimeout, match="within 0.2s") as info:
                await client.get("/", timeout_s=0.2)
            assert 0.15 < loop.time() - t0 < 2 and isinstance(info.value, TimeoutError)
            assert client.num_idle == 0
    run(main())


def test_a_stale_keep_alive_connection_is_retried_once_on_a_new_one():
    async def handle(reader, writer, index):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + str(index).encode())
        await writer.drain()
        await read_request(reader)  # a second request on this connection: closed without an answer
        writer.transport.abort()

    async def main():
        async with raw_server(handle) as (url, accepted), HTTPClient(url) as client:
            assert (await client.get("/")).body == b"1"
            assert (await client.get("/")).body == b"2"  # sent again on a new connection
            assert accepted[0] == 2
    run(main())


def test_connect_ahead_opens_idle_connections_that_the_next_requests_use():
    async def main():
        async with raw_server(_answering()) as (url, accepted), HTTPClient(url, max_idle=24) as client:
            assert await client.connect_ahead(40, parallel=8) == 24  # capped at max_idle
            assert client.num_connections == 24 and client.num_idle == 24
            assert await client.connect_ahead(10) == 24 and client.num_connections == 24  # enough already
            rs = await asyncio.gather(*[client.get("/") for _ in range(24)])
            assert [r.body for r in rs] == [b"ok"] * 24
            assert accepted[0] == 24 and client.num_connections == 24  # no connect on the way
    run(main())


def test_a_connection_opened_ahead_and_closed_by_the_server_is_replaced():
    async def handle(reader, writer, index):
        if index == 1:  # the one opened ahead: closed idle, as uvicorn does after its keep-alive timeout
            writer.transport.abort()
            return
        await _answering()(reader, writer, index)

    async def main():
        async with raw_server(handle) as (url, accepted), HTTPClient(url) as client:
            await client.connect_ahead(1)
            assert (await client.get("/")).body == b"ok" and accepted[0] == 2
    run(main())


def test_connect_ahead_to_nothing_raises_the_connect_error():
    async def main():
        async with HTTPClient(f"http://127.0.0.1:{free_port()}") as client:
            with pytest.raises(ConnectError, match="cannot connect"):
                await client.connect_ahead(4)
            assert client.num_connections == 0
    run(main())


def test_body_callback_error_ends_the_request_and_the_connection(mock):
    class Stop(Exception):
        pass

    def on_body(data):
        raise Stop("enough")

    async def main():
        async with HTTPClient(f"http://{mock.url}") as client:
            body = json.dumps({"prompt": [1], "stream": True}).encode()
            with pytest.raises(Stop, match="enough"):
                await client.post("/v1/completions", body, on_body=on_body)
            assert client.num_idle == 0
            assert (await client.get("/health")).status == 200
    run(main())


def test_cancel_mid_response_drops_the_connection():
    dropped = asyncio.Event()

    async def handle(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        try:
            await reader.read()
        finally:
            dropped.set()

    async def main():
        async with raw_server(handle) as (url, _), HTTPClient(url) as client:
            got = asyncio.Event()
            task = asyncio.ensure_future(client.post("/", b"{}", on_body=lambda d: got.set()))
            await got.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(dropped.wait(), 5)  # the server sees the connection end
            assert client.num_idle == 0 and client.num_connections == 0
    run(main())


def _answering(arrived: asyncio.Event | None = None):
    """A raw-server handler answering every request on a connection with 200 'ok'."""
    async def handle(reader, writer, _):
        while True:
            await read_request(reader)
            if arrived is not None:
                arrived.set()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    return handle


def test_start_writes_at_once_on_an_idle_connection_even_in_a_plain_callback():
    async def main():
        arrived = asyncio.Event()
        async with raw_server(_answering(arrived)) as (url, accepted), HTTPClient(url) as client:
            ex = client.start("GET", "/a")  # no idle connection: it connects and writes when awaited
            assert ex.sent_ns == 0
            assert (await ex).body == b"ok" and ex.sent_ns > 0
            arrived.clear()
            loop = asyncio.get_running_loop()
            taken = loop.create_future()

            def callback():  # not a task: nothing here can await
                started = client.start("POST", "/b", b"{}")
                taken.set_result((started, started.sent_ns, time.perf_counter_ns()))

            loop.call_soon(callback)
            started, sent_ns, returned = await taken
            assert 0 < sent_ns <= returned  # written before start() returned
            await asyncio.wait_for(arrived.wait(), 5)  # and at the server before anyone awaits the response
            assert (await started).body == b"ok"
            assert accepted[0] == 1 and client.num_idle == 1
    run(main())


def test_an_exchange_not_awaited_is_aborted_with_its_connection():
    dropped = asyncio.Event()

    async def handle(reader, writer, index):
        if index > 1:
            return await _answering()(reader, writer, index)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)  # the started exchange: never answered
        try:
            await reader.read()
        finally:
            dropped.set()

    async def main():
        async with raw_server(handle) as (url, accepted), HTTPClient(url) as client:
            await client.get("/")
            ex = client.start("GET", "/", timeout_s=0.2)  # written on the idle connection
            assert ex.sent_ns > 0
            ex.abort()
            ex.abort()  # again: a no-op
            await asyncio.wait_for(dropped.wait(), 5)
            await asyncio.sleep(0.3)  # past its deadline: its timer was stopped with it
            assert (await client.get("/")).body == b"ok"  # on a new connection
            assert accepted[0] == 2 and client.num_connections == 1
    run(main())


def test_headers_are_sent_and_never_in_messages():
    seen = []

    async def handle(reader, writer, _):
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def main():
        async with raw_server(handle) as (url, _), \
                HTTPClient(url, headers={"Authorization": "Bearer sk-secret"}) as client:
            with pytest.raises(ProtocolError) as info:
                await client.post("/v1/completions", b'{"a":1}')
            assert "sk-secret" not in str(info.value)
    run(main())
    head = seen[0].decode()
    assert head.startswith("POST /v1/completions HTTP/1.1\r\n") and "Authorization: Bearer sk-secret\r\n" in head
    assert "Content-Length: 7\r\n" in head and head.endswith('{"a":1}')


def test_split_url_and_bad_inputs():
    assert split_url("127.0.0.1:8000") == ("http", "127.0.0.1", 8000, False)
    assert split_url("https://h/v1") == ("https", "h", 443, True)
    with pytest.raises(ValueError, match="http:// or https://"):
        split_url("ftp://h:1")
    with pytest.raises(ValueError, match="CR/LF"):
        HTTPClient("http://h:1", headers={"X": "a\r\nInjected: 1"})
