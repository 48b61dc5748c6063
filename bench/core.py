"""The core benchmark: a local mesh of 2 nodes against multiprocessing.Pool(2) and raw TCP.

Prints ONE JSON object on stdout (progress goes to stderr). Workloads, each run on
the mesh (``Client.local(2)``) and on ``multiprocessing.Pool(2)`` in the same run:

* latency: call -> result of a trivial function, 1,000 sequential calls (p50/p99);
* throughput: a map of 20,000 trivial tasks, each its own job (tasks/s, from the
  ``map`` call until every result is back), and the same as 20,000 ``call``s in a
  loop; Pool both one ``apply_async`` per item and ``Pool.map`` with its default
  chunking;
* CPU: a map of 10 ``sum_primes`` calls, speedup over the same calls run serially
  in this process;
* bandwidth: one call whose argument is a 50 MB ``bytes`` (MB/s, 1 MB = 10^6 bytes);
* start: a fresh ``Client.local(2)`` until the first result is back (s).

And the floors: an asyncio TCP echo round trip over 127.0.0.1 (server in another
process), raw loopback TCP throughput (500 MB through one connection), and the relay
floor: the mesh's own shape with no work in it (a caller thread hands a small message
to an asyncio loop thread, which sends it over TCP to an asyncio process, which
passes it over a socketpair to a blocking process, and back), and the wire floor: the
same carrying the mesh's own messages through its codec (encrypted frames, pickled
arguments and value) with nothing else. And the codec alone, in this process with no
socket: a 50 MB argument's Submit and a small one through a session pair
(AES-256-GCM) and a plain pair (the worker pipes' clear frames), so what encryption
costs shows apart from the machine's other load. So the latency gap to Pool splits into what
the shape costs, what the wire protocol adds, and what the mesh's job model adds. CPU time
per call (client; nodes and their workers) is read from /proc beside the latencies:
unlike wall time it hardly moves with the machine's other load. Then the ratios and,
for each target of the core issue, whether it is met. Only 127.0.0.1.

    .venv/bin/python bench/core.py            # the full run (< 3 minutes on 2 cores)
    .venv/bin/python bench/core.py --quick    # a smoke run with small sizes
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import math
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

MB = 1_000_000
perf = time.perf_counter


# ---- the workloads (module level, so Pool's workers and the mesh both can run them) ----


def noop(x: Any) -> Any:
    return x


def length(blob: bytes) -> int:
    return len(blob)


# The CPU-bound workload is the example's own sum_primes (the seed's), not a copy.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from primes import sum_primes  # type: ignore[import-not-found]  # noqa: E402

from mesh._frames import FrameCodec  # noqa: E402
from mesh._protocol import DONE, Message, Ran, Results, Run, Submit  # noqa: E402
from mesh._serialize import dumps_payload, loads  # noqa: E402

# ---- helpers ----


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    xs = sorted(samples)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def latency_us(samples_s: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(samples_s, 50) * 1e6, 1),
        "p99": round(percentile(samples_s, 99) * 1e6, 1),
        "mean": round(statistics.fmean(samples_s) * 1e6, 1),
        "n": len(samples_s),
    }


def _latency(cfg: Config, call: Callable[..., Any]) -> dict[str, float]:
    """p50/p99 of ``call(noop, i)`` run one after another, after a warm-up."""
    for i in range(50):
        call(noop, i)
    lat = []
    for i in range(cfg.latency_calls):
        t0 = perf()
        call(noop, i)
        lat.append(perf() - t0)
    return latency_us(lat)


def _arg_throughput(cfg: Config, call: Callable[..., Any]) -> dict[str, Any]:
    """MB/s of ``call(length, blob)`` with a blob of ``cfg.arg_bytes``: median and runs."""
    blob = os.urandom(cfg.arg_bytes)
    call(length, b"warm")
    runs = []
    for _ in range(cfg.repeat):
        t0 = perf()
        n = call(length, blob)
        dt = perf() - t0
        assert n == cfg.arg_bytes
        runs.append(cfg.arg_bytes / MB / dt)
    return {
        "arg_mb_per_s": r(statistics.median(runs), 1),
        "arg_runs_mb_per_s": [r(x, 1) for x in runs],
    }


def r(x: float, nd: int = 3) -> float:
    return round(x, nd)


class Config:
    def __init__(self, args: argparse.Namespace) -> None:
        quick = args.quick
        self.quick = quick
        self.repeat = args.repeat if args.repeat is not None else (1 if quick else 3)
        self.latency_calls = 200 if quick else 1_000
        self.map_tasks = 2_000 if quick else 20_000
        self.cpu_tasks = 10
        self.cpu_n = 30_000 if quick else 150_000  # ~0.24 s per call on a 2020s core
        # the map's tail, where push-based placement loses to a shared queue (issue 15)
        self.cpu_short_n = 6_000 if quick else 30_000  # ~50 ms per call on a 2020s core
        self.arg_bytes = 5 * MB if quick else 50 * MB
        self.echo_round_trips = 200 if quick else 1_000
        self.raw_bytes = 50 * MB if quick else 500 * MB

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---- the floors: raw loopback TCP ----


def _echo_server(conn: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        conn.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[None] = loop.create_future()

        def on_parent() -> None:  # "stop", or the parent went away
            if not stop.done():
                stop.set_result(None)

        loop.add_reader(conn.fileno(), on_parent)
        async with server:
            await stop

    asyncio.run(serve())


def bench_echo(cfg: Config) -> dict[str, Any]:
    """asyncio client <-> asyncio echo server in another process, small messages."""
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_echo_server, args=(child,), daemon=True)
    proc.start()
    try:
        port = parent.recv()

        async def run() -> list[float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            msg = b"x" * 64
            samples = []
            for i in range(50 + cfg.echo_round_trips):
                t0 = perf()
                writer.write(msg)
                await reader.readexactly(len(msg))
                if i >= 50:
                    samples.append(perf() - t0)
            writer.close()
            await writer.wait_closed()
            return samples

        samples = asyncio.run(run())
    finally:
        parent.send("stop")
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return latency_us(samples)


def _receive(listener: socket.socket, size: int, received: list[int]) -> None:
    conn, _ = listener.accept()
    with conn:
        buf = bytearray(1 << 20)
        left = size
        while left > 0:
            n = conn.recv_into(buf, min(len(buf), left))
            if n == 0:
                break
            left -= n
        received.append(size - left)
        conn.sendall(b"k")


def bench_tcp_throughput(cfg: Config) -> dict[str, Any]:
    """Blocking sockets, receiver in a thread: the loopback bandwidth this machine gives."""
    chunk = memoryview(bytearray(1 << 20))
    runs = []
    for _ in range(cfg.repeat):
        received: list[int] = []
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            t = threading.Thread(
                target=_receive, args=(listener, cfg.raw_bytes, received), daemon=True
            )
            t.start()
            with socket.create_connection(("127.0.0.1", port)) as s:
                t0 = perf()
                left = cfg.raw_bytes
                while left > 0:
                    n = min(len(chunk), left)
                    s.sendall(chunk[:n])
                    left -= n
                assert s.recv(1) == b"k"
                dt = perf() - t0
            t.join()
        assert received == [cfg.raw_bytes]
        runs.append(cfg.raw_bytes / MB / dt)
    return {"mb_per_s": r(statistics.median(runs), 1), "runs": [r(x, 1) for x in runs]}


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by ``pids`` and their child processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


def _relay_worker(fd: int, wire: bool) -> None:
    """The floor's worker: blocking, echoes what it reads; with ``wire``, runs each Run's
    items with ``noop`` as a mesh worker would (unpickle, call, pickle) and answers Ran."""
    sock = socket.socket(fileno=fd)
    codec = FrameCodec(authenticated=False)
    while data := sock.recv(65536):
        if not wire:
            sock.sendall(data)
            continue
        for msg in codec.receive(data):
            assert isinstance(msg, Run)
            items = [(jid, DONE, dumps_payload(noop(*loads(args))), None, 0.0, 0.0, 0.0, "", "")
                     for jid, args in msg.items]  # fmt: skip
            for chunk in codec.send(Ran(tuple(items))):
                sock.sendall(chunk)


class _Held(asyncio.Protocol):
    """A protocol that keeps its transport."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport


class _Relay(_Held):
    """Writes what it reads to its peer relay (set once both exist)."""

    peer: _Relay | None = None

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.transport.write(data)


# The wire floor's session keys: fixed, since no handshake is timed (a connection's).
_FLOOR_KEYS = (b"c" * 32, b"n" * 32)


def _session(codec: FrameCodec, client_side: bool) -> FrameCodec:
    send, recv = _FLOOR_KEYS if client_side else _FLOOR_KEYS[::-1]
    codec.start_session(send, recv)
    return codec


class _WireRelay(_Relay):
    """The wire floor's node side: decodes each message (tag checked on the client's
    connection), turns a Submit into a Run and a Ran into Results, as the node does,
    and encodes it for the other side; no job table, no store."""

    def __init__(self, codec: FrameCodec) -> None:
        self.codec = codec

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        assert isinstance(peer, _WireRelay)
        for msg in self.codec.receive(data):
            out: Message
            if isinstance(msg, Submit):
                out = Run(msg.fhash, b"", msg.fname, msg.items)
            else:
                assert isinstance(msg, Ran)
                out = Results(tuple(item[:4] for item in msg.items), 1, 0, 0.0)
            for chunk in peer.codec.send(out):
                peer.transport.write(chunk)


def _relay_node(conn: Any, fd: int, wire: bool) -> None:
    """The floor's node: asyncio, relays the client's TCP connection to its worker."""

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        _, to_worker = await loop.create_connection(
            (lambda: _WireRelay(FrameCodec(authenticated=False))) if wire else _Relay,
            sock=socket.socket(fileno=fd),
        )

        def accept() -> _Relay:
            to_client = _WireRelay(_session(FrameCodec(), False)) if wire else _Relay()
            to_client.peer, to_worker.peer = to_worker, to_client
            return to_client

        server = await loop.create_server(accept, "127.0.0.1", 0)
        conn.send(server.sockets[0].getsockname()[1])
        stop: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), lambda: stop.done() or stop.set_result(None))
        async with server:
            await stop

    asyncio.run(serve())


class _Waiter(_Held):
    """The floor's client side: sets the caller's event when the echo is back; with a
    codec (the wire floor), once a whole Results has arrived and passed its tag."""

    event: threading.Event | None = None
    codec: FrameCodec | None = None
    results: list[Message]

    def data_received(self, data: bytes) -> None:
        if self.codec is not None:
            self.results = self.codec.receive(data)
            if not self.results:
                return
        if self.event is not None:
            self.event.set()


def bench_relay_floor(cfg: Config, wire: bool = False) -> dict[str, Any]:
    """The mesh's shape (caller thread -> loop thread -> TCP -> asyncio node -> socketpair
    -> blocking worker, and back) doing nothing else: what a call costs before any work.

    ``wire``: the same, carrying the mesh's own messages through its codec: the caller
    pickles the arguments, the loop thread sends an encrypted Submit, the node checks and
    decodes it and sends a Run, the worker unpickles, calls, pickles and answers Ran,
    the node sends Results, and the caller unpickles the value. What the wire protocol
    costs a call, before any job table, placement or bookkeeping."""
    to_node, to_worker = socket.socketpair()
    parent, child = multiprocessing.Pipe()
    worker = multiprocessing.Process(
        target=_relay_worker, args=(to_worker.fileno(), wire), daemon=True
    )
    node = multiprocessing.Process(
        target=_relay_node, args=(child, to_node.fileno(), wire), daemon=True
    )
    worker.start()
    node.start()
    to_node.close()
    to_worker.close()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    waiter: _Waiter | None = None
    try:
        port = parent.recv()

        async def connect() -> _Waiter:
            _, waiter = await loop.create_connection(_Waiter, "127.0.0.1", port)
            waiter.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            )
            return waiter

        waiter = asyncio.run_coroutine_threadsafe(connect(), loop).result(30)
        msg = b"x" * 200  # about a Submit's size
        if wire:
            waiter.codec = codec = _session(FrameCodec(), True)
            fhash = os.urandom(32)

            def submit(args: Any) -> None:  # the loop thread
                for chunk in codec.send(Submit(fhash, b"", "noop", (("floor-1", args),))):
                    waiter.transport.write(chunk)

        def call(_f: Callable[..., Any], *args: Any) -> Any:
            event = threading.Event()
            waiter.event = event
            if wire:
                loop.call_soon_threadsafe(submit, dumps_payload(args))
            else:
                loop.call_soon_threadsafe(waiter.transport.write, msg)
            if not event.wait(30):
                raise TimeoutError("relay floor: no echo in 30 s")
            if wire:
                (results,) = waiter.results
                assert isinstance(results, Results)
                value = loads(results.items[0][2])
                if value != args[0]:
                    raise AssertionError(f"wire floor: sent {args[0]!r}, got {value!r} back")
                return value
            return None

        assert node.pid is not None and worker.pid is not None
        out: dict[str, Any] = {"latency_us": _latency(cfg, call)}
        out["cpu_us_per_call"] = _cpu_per_call(cfg, call, [node.pid, worker.pid])
        return out
    finally:
        if waiter is not None:
            loop.call_soon_threadsafe(waiter.transport.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(asyncio.sleep(0))  # the transport's close, still pending
        loop.close()
        parent.send("stop")
        parent.close()
        for proc in (node, worker):
            proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _cpu_per_call(cfg: Config, call: Callable[..., Any], pids: list[int]) -> dict[str, float]:
    """CPU µs per sequential call: this process (all its threads), and ``pids`` with
    their children (the nodes and their workers)."""
    me, them = time.process_time(), cpu_s(pids)
    for i in range(cfg.latency_calls):
        call(noop, i)
    n = cfg.latency_calls
    return {
        "client": r((time.process_time() - me) / n * 1e6, 1),
        "nodes_and_workers": r((cpu_s(pids) - them) / n * 1e6, 1),
    }


# ---- the mesh ----


def bench_mesh(cfg: Config) -> dict[str, Any]:
    from mesh.client import Client

    out: dict[str, Any] = {}
    timeout_s = 300.0

    log(f"mesh: start a local mesh of 2 nodes -> first result, {cfg.repeat}x")
    starts = []
    client = None
    try:
        for _ in range(cfg.repeat):
            if client is not None:
                client.close()
                client = None
            t0 = perf()
            client = Client.local(2)
            assert client.result(client.call(noop, 1), timeout=60) == 1
            starts.append(perf() - t0)
        assert client is not None
        c = client
        out["start_to_first_result_s"] = r(statistics.median(starts))
        out["start_runs_s"] = [r(x) for x in starts]
        out["nodes"] = [{"name": n.name, "workers": n.workers} for n in c.nodes()]

        # Warm both nodes' workers (function caches, imports) before timing.
        c.result(c.map(noop, range(200)), timeout=timeout_s)
        c.result(c.map(sum_primes, [10] * 4), timeout=timeout_s)

        def mesh_call(f: Callable[..., Any], *args: Any) -> Any:
            return c.result(c.call(f, *args), timeout=timeout_s)

        log(f"mesh: latency, {cfg.latency_calls} sequential call -> result")
        out["latency_us"] = _latency(cfg, mesh_call)
        assert c._local is not None
        out["latency_cpu_us_per_call"] = _cpu_per_call(cfg, mesh_call, c._local.pids)

        def tasks_per_s(submit: Callable[[range], list[str]]) -> list[float]:
            """``submit`` the trivial tasks and wait for every result, cfg.repeat times."""
            rates = []
            for _ in range(cfg.repeat):
                t0 = perf()
                got = c.result(submit(range(cfg.map_tasks)), timeout=timeout_s)
                dt = perf() - t0
                assert got == list(range(cfg.map_tasks))
                rates.append(cfg.map_tasks / dt)
            return rates

        log(f"mesh: map of {cfg.map_tasks:,} trivial tasks, {cfg.repeat}x")
        rates = tasks_per_s(lambda xs: c.map(noop, xs))
        out["map_tasks_per_s"] = r(statistics.median(rates), 0)
        out["map_runs_tasks_per_s"] = [r(x, 0) for x in rates]

        log(f"mesh: {cfg.map_tasks:,} call(noop, i) in a loop, {cfg.repeat}x")
        rates = tasks_per_s(lambda xs: [c.call(noop, i) for i in xs])
        out["call_loop_tasks_per_s"] = r(statistics.median(rates), 0)
        out["call_loop_runs_tasks_per_s"] = [r(x, 0) for x in rates]

        out["cpu"] = _cpu(
            cfg, lambda ns: c.result(c.map(sum_primes, ns), timeout=timeout_s), "mesh"
        )
        out["cpu_short"] = _cpu(
            cfg,
            lambda ns: c.result(c.map(sum_primes, ns), timeout=timeout_s),
            "mesh",
            cfg.cpu_short_n,
        )

        log(f"mesh: call(f, {cfg.arg_bytes / MB:.0f} MB bytes), {cfg.repeat}x")
        out.update(_arg_throughput(cfg, mesh_call))
    finally:
        if client is not None:
            client.close()
    return out


def _cpu(
    cfg: Config, run_map: Callable[[list[int]], list[int]], who: str, n: int = 0
) -> dict[str, Any]:
    """Serial in this process, then the parallel map, paired per repeat; median speedup.
    ``n``: the first sum_primes argument (default ``cfg.cpu_n``)."""
    n = n or cfg.cpu_n
    ns = list(range(n, n + cfg.cpu_tasks))
    log(f"{who}: CPU map of {cfg.cpu_tasks} sum_primes({n:,}..), serial vs parallel, {cfg.repeat}x")
    serial, parallel, speedups = [], [], []
    for _ in range(cfg.repeat):
        t0 = perf()
        expected = [sum_primes(n) for n in ns]
        s = perf() - t0
        t0 = perf()
        got = run_map(ns)
        p = perf() - t0
        assert got == expected
        serial.append(s)
        parallel.append(p)
        speedups.append(s / p)
    return {
        "speedup": r(statistics.median(speedups), 2),
        "serial_s": r(statistics.median(serial)),
        "parallel_s": r(statistics.median(parallel)),
        "speedup_runs": [r(x, 2) for x in speedups],
    }


# ---- multiprocessing.Pool(2) ----


def bench_pool(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    timeout_s = 300.0
    t0 = perf()
    with multiprocessing.Pool(2) as pool:
        pool.apply_async(noop, (1,)).get(timeout_s)
        out["start_to_first_result_s"] = r(perf() - t0)

        def pool_call(f: Callable[..., Any], *args: Any) -> Any:
            return pool.apply_async(f, args).get(timeout_s)

        log(f"pool: latency, {cfg.latency_calls} sequential apply_async().get()")
        out["latency_us"] = _latency(cfg, pool_call)
        workers = [p.pid for p in multiprocessing.active_children() if p.pid is not None]
        cpu = _cpu_per_call(cfg, pool_call, workers)
        out["latency_cpu_us_per_call"] = {
            "parent": cpu["client"],
            "workers": cpu["nodes_and_workers"],
        }

        log(f"pool: {cfg.map_tasks:,} apply_async one by one, and Pool.map, {cfg.repeat}x")
        one, chunked = [], []
        for _ in range(cfg.repeat):
            t0 = perf()
            handles = [pool.apply_async(noop, (i,)) for i in range(cfg.map_tasks)]
            got = [h.get(timeout_s) for h in handles]
            one.append(cfg.map_tasks / (perf() - t0))
            assert got == list(range(cfg.map_tasks))
            t0 = perf()
            got = pool.map(noop, range(cfg.map_tasks))
            chunked.append(cfg.map_tasks / (perf() - t0))
            assert got == list(range(cfg.map_tasks))
        out["apply_one_by_one_tasks_per_s"] = r(statistics.median(one), 0)
        out["apply_one_by_one_runs"] = [r(x, 0) for x in one]
        out["pool_map_tasks_per_s"] = r(statistics.median(chunked), 0)
        out["pool_map_runs"] = [r(x, 0) for x in chunked]

        # chunksize=1: with Pool.map's default (2 here) 10 tasks split 6/4 between the
        # two workers, which would understate what Pool can do.
        out["cpu"] = _cpu(cfg, lambda ns: pool.map(sum_primes, ns, chunksize=1), "pool")
        out["cpu"]["note"] = "Pool.map(sum_primes, ns, chunksize=1)"
        out["cpu_short"] = _cpu(
            cfg, lambda ns: pool.map(sum_primes, ns, chunksize=1), "pool", cfg.cpu_short_n
        )

        log(f"pool: apply_async(f, ({cfg.arg_bytes / MB:.0f} MB bytes,)), {cfg.repeat}x")
        out.update(_arg_throughput(cfg, pool_call))
    return out


# ---- the codec alone ----


def _codec_pair(encrypted: bool) -> tuple[FrameCodec, FrameCodec]:
    if not encrypted:
        return FrameCodec(authenticated=False), FrameCodec(authenticated=False)
    return _session(FrameCodec(), True), _session(FrameCodec(), False)


def _codec_round(sender: FrameCodec, receiver: FrameCodec, msg: Message) -> None:
    """One message sent and received, fed to the receiver as a socket would (256 KiB)."""
    head, rest = sender.send_stream(msg)
    got: list[Message] = []
    for part in (head, rest or ()):
        for buf in part:
            view = memoryview(buf)
            for at in range(0, len(view), 256 * 1024):
                got += receiver.receive(view[at : at + 256 * 1024])
    assert len(got) == 1


def bench_codec(cfg: Config) -> dict[str, Any]:
    """The frame codec with no I/O: MB/s of a big argument's Submit (send + receive) and
    us per small Submit, encrypted and plain (best of the repeats: the least disturbed)."""
    out: dict[str, Any] = {}
    big = os.urandom(cfg.arg_bytes)
    big_msg = Submit(b"h" * 16, b"f", "bench.length", (("j1", big),))
    small_msg = Submit(b"h" * 16, b"f", "bench.noop", (("j1", b"\x80\x05K\x01."),))
    small_n = 2000 if cfg.quick else 20_000
    for name, encrypted in (("encrypted", True), ("plain", False)):
        sender, receiver = _codec_pair(encrypted)
        runs = []
        for _ in range(max(cfg.repeat, 3)):
            t0 = perf()
            _codec_round(sender, receiver, big_msg)
            runs.append(cfg.arg_bytes / MB / (perf() - t0))
        small = []
        for _ in range(max(cfg.repeat, 3)):
            t0 = perf()
            for _ in range(small_n):
                _codec_round(sender, receiver, small_msg)
            small.append((perf() - t0) / small_n * 1e6)
        out[name] = {"arg_mb_per_s": r(max(runs), 1), "small_submit_us": r(min(small), 2)}
    out["small_submit_us_added_by_encryption"] = r(
        out["encrypted"]["small_submit_us"] - out["plain"]["small_submit_us"], 2
    )
    return out


# ---- the report ----


def _target(measured: float, op: str, bound: float, what: str) -> dict[str, Any]:
    met = measured <= bound if op == "<=" else measured >= bound
    return {"what": what, "measured": measured, "target": f"{op} {bound:g}", "met": met}


def report(
    cfg: Config,
    mesh: dict[str, Any],
    pool: dict[str, Any],
    echo: dict[str, Any],
    tcp: dict[str, Any],
    floor: dict[str, Any],
    wire_floor: dict[str, Any],
    codec: dict[str, Any],
    started: float,
    load_before: tuple[float, ...],
) -> dict[str, Any]:
    def ratio(a: float, b: float) -> float:
        return round(a / b, 3) if b else float("nan")

    ratios = {
        "latency_p50_mesh_over_pool": ratio(mesh["latency_us"]["p50"], pool["latency_us"]["p50"]),
        "latency_p99_mesh_over_pool": ratio(mesh["latency_us"]["p99"], pool["latency_us"]["p99"]),
        "latency_p50_mesh_over_raw_echo": ratio(mesh["latency_us"]["p50"], echo["p50"]),
        "latency_p50_relay_floor_over_pool": ratio(
            floor["latency_us"]["p50"], pool["latency_us"]["p50"]
        ),
        "latency_p50_mesh_over_relay_floor": ratio(
            mesh["latency_us"]["p50"], floor["latency_us"]["p50"]
        ),
        "latency_p50_wire_floor_over_pool": ratio(
            wire_floor["latency_us"]["p50"], pool["latency_us"]["p50"]
        ),
        "latency_p50_mesh_over_wire_floor": ratio(
            mesh["latency_us"]["p50"], wire_floor["latency_us"]["p50"]
        ),
        "tasks_per_s_mesh_over_pool_one_by_one": ratio(
            mesh["map_tasks_per_s"], pool["apply_one_by_one_tasks_per_s"]
        ),
        "call_loop_tasks_per_s_mesh_over_pool_one_by_one": ratio(
            mesh["call_loop_tasks_per_s"], pool["apply_one_by_one_tasks_per_s"]
        ),
        "tasks_per_s_mesh_over_pool_map": ratio(
            mesh["map_tasks_per_s"], pool["pool_map_tasks_per_s"]
        ),
        "cpu_speedup_mesh_over_pool": ratio(mesh["cpu"]["speedup"], pool["cpu"]["speedup"]),
        "cpu_short_parallel_s_mesh_over_pool": ratio(
            mesh["cpu_short"]["parallel_s"], pool["cpu_short"]["parallel_s"]
        ),
        "arg_mb_per_s_mesh_over_pool": ratio(mesh["arg_mb_per_s"], pool["arg_mb_per_s"]),
        "arg_mb_per_s_mesh_over_raw_tcp": ratio(mesh["arg_mb_per_s"], tcp["mb_per_s"]),
    }
    targets = {
        "latency": _target(
            ratios["latency_p50_mesh_over_pool"],
            "<=",
            1.5,
            "call->result p50 / Pool apply_async().get() p50",
        ),
        "map_rate": _target(
            mesh["map_tasks_per_s"],
            ">=",
            50_000,
            f"map of {cfg.map_tasks:,} trivial tasks, tasks/s",
        ),
        "map_vs_pool": _target(
            ratios["tasks_per_s_mesh_over_pool_one_by_one"],
            ">=",
            2,
            "map tasks/s / Pool apply_async one-by-one tasks/s",
        ),
        "cpu_speedup": _target(
            mesh["cpu"]["speedup"],
            ">=",
            1.85,
            f"map of {cfg.cpu_tasks} sum_primes, speedup over serial",
        ),
        "arg_vs_pool": _target(
            ratios["arg_mb_per_s_mesh_over_pool"],
            ">=",
            2,
            f"{cfg.arg_bytes / MB:.0f} MB argument MB/s / Pool's",
        ),
        "arg_vs_raw_tcp": _target(
            ratios["arg_mb_per_s_mesh_over_raw_tcp"],
            ">=",
            0.25,
            f"{cfg.arg_bytes / MB:.0f} MB argument MB/s / raw loopback TCP",
        ),
        "start": _target(
            mesh["start_to_first_result_s"], "<=", 1.0, "fresh Client.local(2) -> first result, s"
        ),
    }
    return {
        "benchmark": "lanmesh core",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "config": cfg.as_dict(),
        "mesh": mesh,
        "pool": pool,
        "raw": {
            "asyncio_echo_round_trip_us": echo,
            "tcp_throughput": tcp,
            "relay_floor": floor,
            "wire_floor": wire_floor,
            "codec": codec,
        },
        "ratios": ratios,
        "targets": targets,
        "all_targets_met": all(t["met"] for t in targets.values()),
        "quick_sizes_not_comparable_to_targets": cfg.quick,
        "elapsed_s": r(perf() - started, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description="lanmesh core benchmark: one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: a smoke run")
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="repeats of the cheap workloads, median reported (default 3; 1 with --quick)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="abort with every thread's traceback after this many seconds (default 900)",
    )
    args = p.parse_args()
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be at least 1")
    cfg = Config(args)
    faulthandler.dump_traceback_later(args.timeout, exit=True)  # a hang becomes a traceback
    started = perf()
    load_before = os.getloadavg()
    log(
        f"{os.cpu_count()} CPUs, load {load_before[0]:.2f}; "
        f"{'quick' if cfg.quick else 'full'} run, {cfg.repeat} repeat(s)"
    )

    log(f"raw: asyncio echo over 127.0.0.1, {cfg.echo_round_trips} round trips")
    echo = bench_echo(cfg)
    log(f"raw: TCP throughput over 127.0.0.1, {cfg.raw_bytes / MB:.0f} MB, {cfg.repeat}x")
    tcp = bench_tcp_throughput(cfg)
    log(f"raw: relay floor (the mesh's shape, no work), {cfg.latency_calls} calls")
    floor = bench_relay_floor(cfg)
    log(f"raw: wire floor (the same, carrying the mesh's messages), {cfg.latency_calls} calls")
    wire_floor = bench_relay_floor(cfg, wire=True)
    log(f"raw: the codec alone, a {cfg.arg_bytes / MB:.0f} MB argument and small Submits")
    codec = bench_codec(cfg)
    mesh = bench_mesh(cfg)
    pool = bench_pool(cfg)

    out = report(cfg, mesh, pool, echo, tcp, floor, wire_floor, codec, started, load_before)
    faulthandler.cancel_dump_traceback_later()
    met = sum(t["met"] for t in out["targets"].values())
    log(f"done in {out['elapsed_s']} s; {met} of {len(out['targets'])} targets met")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
