"""Transport for core worker processes, measured before choosing: messages/s and round-trip latency of
multiprocessing.Pipe + pickle against pyzmq (PUSH/PULL over ipc) + msgspec msgpack, shaped like samples.

One message out per sample (id, 128 token ids, flags), two back (first token, final 128 ids).
`--latency`: one sample at a time at `--rate` per second, the round trip to its first token, p50 / p99: a
Pipe is a socketpair written and read by the Python threads themselves; zmq's ipc goes through libzmq's
I/O thread on each side (the hops `--workers_per_core` adds to TTFT).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import signal
import tempfile
import time

import numpy as np


def _pipe_echo(conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        msg = conn.recv_bytes()
        if msg == b"stop":
            return
        rid, ids, _ = pickle.loads(msg)
        conn.send_bytes(pickle.dumps(("f", rid, ids[:1])))
        conn.send_bytes(pickle.dumps(("d", rid, ids, len(ids))))


def _zmq_echo(addr_in: str, addr_out: str) -> None:
    import msgspec
    import zmq

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.connect(addr_in)
    push.connect(addr_out)
    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    while True:
        msg = pull.recv()
        if msg == b"stop":
            return
        rid, ids, _ = dec.decode(msg)
        push.send(enc.encode(("f", rid, ids[:4])))
        push.send(enc.encode(("d", rid, ids, len(ids) // 4)))


def bench_pipe(n: int, window: int, ids: np.ndarray) -> dict:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_pipe_echo, args=(child,), daemon=True)
    p.start()
    t0, sent, got = time.perf_counter(), 0, 0
    c0 = time.process_time()
    while got < 2 * n:
        while sent < n and sent - got // 2 < window:
            parent.send_bytes(pickle.dumps((sent, ids, True)))
            sent += 1
        pickle.loads(parent.recv_bytes())
        got += 1
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    parent.send_bytes(b"stop")
    p.join(5)
    return {"transport": "Pipe+pickle", "samples_per_s": n / dt, "parent_cpu_us_per_sample": cpu / n * 1e6}


def _zmq_echo_pair():
    """An echo process behind a PUSH/PULL pair over ipc, with msgpack's encoder and decoder."""
    import msgspec
    import zmq

    tmp = tempfile.mkdtemp()
    a_in, a_out = f"ipc://{tmp}/in", f"ipc://{tmp}/out"
    zctx = zmq.Context()
    push, pull = zctx.socket(zmq.PUSH), zctx.socket(zmq.PULL)
    push.bind(a_in)
    pull.bind(a_out)
    p = mp.get_context("spawn").Process(target=_zmq_echo, args=(a_in, a_out), daemon=True)
    p.start()
    return zctx, push, pull, p, msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()


def bench_zmq(n: int, window: int, ids: np.ndarray) -> dict:
    zctx, push, pull, p, enc, dec = _zmq_echo_pair()
    raw = ids.tobytes()
    t0, sent, got = time.perf_counter(), 0, 0
    c0 = time.process_time()
    while got < 2 * n:
        while sent < n and sent - got // 2 < window:
            push.send(enc.encode((sent, raw, True)))
            sent += 1
        dec.decode(pull.recv())
        got += 1
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    push.send(b"stop")
    p.join(5)
    zctx.destroy(linger=0)
    return {"transport": "pyzmq+msgspec", "samples_per_s": n / dt, "parent_cpu_us_per_sample": cpu / n * 1e6}


def latency_pipe(n: int, rate: float, ids: np.ndarray) -> dict:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_pipe_echo, args=(child,), daemon=True)
    p.start()
    parent.send_bytes(pickle.dumps((0, ids, True)))  # the child is up
    parent.recv_bytes(), parent.recv_bytes()
    rtts = []
    for i in range(n):
        t = time.perf_counter_ns()
        parent.send_bytes(pickle.dumps((i, ids, True)))
        pickle.loads(parent.recv_bytes())
        rtts.append(time.perf_counter_ns() - t)
        parent.recv_bytes()
        time.sleep(1 / rate)
    parent.send_bytes(b"stop")
    p.join(5)
    return _rtt("Pipe+pickle", rtts)


def latency_zmq(n: int, rate: float, ids: np.ndarray) -> dict:
    zctx, push, pull, p, enc, dec = _zmq_echo_pair()
    raw = ids.tobytes()
    push.send(enc.encode((0, raw, True)))
    pull.recv(), pull.recv()
    rtts = []
    for i in range(n):
        t = time.perf_counter_ns()
        push.send(enc.encode((i, raw, True)))
        dec.decode(pull.recv())
        rtts.append(time.perf_counter_ns() - t)
        pull.recv()
        time.sleep(1 / rate)
    push.send(b"stop")
    p.join(5)
    zctx.destroy(linger=0)
    return _rtt("pyzmq+msgspec", rtts)


def _rtt(name: str, rtts: list[int]) -> dict:
    a = np.array(rtts) / 1e3
    return {"transport": name, "rtt_p50_us": float(np.percentile(a, 50)), "rtt_p99_us": float(np.percentile(a, 99))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--samples", type=int, default=50_000)
    p.add_argument("--window", type=int, default=256, help="samples in flight")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--latency", action="store_true", help="round trips one at a time instead of throughput")
    p.add_argument("--rate", type=float, default=1000.0, help="--latency: samples per second")
    args = p.parse_args()
    ids = np.arange(128, dtype=np.uint32)
    if args.latency:
        print(f"cpus={os.cpu_count()} samples={args.samples} one at a time at {args.rate:g}/s")
        for _ in range(args.repeat):
            for fn in (latency_pipe, latency_zmq):
                r = fn(args.samples, args.rate, ids)
                print(f"{r['transport']:>14}: round trip to the first token p50 {r['rtt_p50_us']:.0f} us, "
                      f"p99 {r['rtt_p99_us']:.0f} us", flush=True)
        return
    print(f"cpus={os.cpu_count()} samples={args.samples} window={args.window}")
    for _ in range(args.repeat):
        for fn in (bench_pipe, bench_zmq):
            r = fn(args.samples, args.window, ids)
            print(f"{r['transport']:>14}: {r['samples_per_s']:>9,.0f} samples/s  "
                  f"parent CPU {r['parent_cpu_us_per_sample']:.1f} us/sample")


if __name__ == "__main__":
    main()
