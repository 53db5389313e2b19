"""The ASGI gate's cost: a trivial app under uvicorn, without and with ``MeteringMiddleware``.

    python benches/asgi.py [--write-results]      # release build: `make bench-asgi`

For each server stack (``httptools-uvloop``, what ``uvicorn[standard]`` runs, and ``h11-asyncio``,
plain ``uvicorn``), two uvicorn servers run side by side, each in its own process (one worker, no
access log), serving the same trivial pure ASGI app (``200 ok``, 2 body bytes): the *plain* one as
it is, the *metered* one wrapped in ``MeteringMiddleware(app, service, actor=...,
require_credits=True, meter_egress=True, egress_usage_type="filesystem:egress:bytes")`` on the
shipped cost map. Its ``actor(scope)`` reads the ``x-user`` header into a prebuilt ``Actor``.
Every metered request is checked (``has_any_usage``) and its 2 body bytes billed (one
``increment_usage``).

The client is this process: one keep-alive HTTP/1.1 connection per server, requests pipelined in
batches of ``--depth`` with two batches in flight, written and read with raw sockets (no HTTP
library: a few system calls per batch, so that on 2 cores the client takes little of the CPU the
server needs). Many short rounds alternate the two servers (order swapped each round). Figures:
requests/s (wall clock) and the server's CPU time per request (its main thread's
``/proc/PID/schedstat``, in ns, which the client's share of the machine does not change), medians
over the rounds; the middleware's cost is the metered server's CPU per request over the plain
one's, taken round by round (the two ran within a second of each other) and summarized by the
median and quartiles of those ratios.

The same servers are also run under ``valgrind --tool=callgrind`` (when it is installed; skip with
``--no-instructions``) for two numbers of requests, and the difference in instructions divided by
the difference in requests: user-space instructions per request, which the machine's other load
cannot move (on this shared 2-core machine the timed ratios' quartiles span +-10%). The goal
(the middleware costs at most 5% of a trivial request) is judged on that ratio.

Checked before timing: both answer ``200 ok``; the metered one answers an actor without budget
with 402 ``insufficient_funds``. Checked after: every response of every round was ``200 ok``
(counted), the middleware counted every metered request, and the service billed exactly 2 bytes
per metered 200 answer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sections import write_section  # benches/ is the script's directory, on sys.path

BENCHES = Path(__file__).resolve().parent
RESULTS = BENCHES / "RESULTS.md"

EGRESS_TYPE = "filesystem:egress:bytes"
STATS_PATH = "/__bench/stats"  # asked without an actor (not metered): the middleware's counters
OK_STATUS = b"HTTP/1.1 200 OK\r\n"
MODES = ("plain", "metered", "passthrough", "credits", "egress")
GOAL = 0.05  # the middleware costs at most 5% of a trivial request (issue 11)
# The configurations whose instructions are counted, beside the plain app: a pass-through
# middleware (the floor of any), the credit gate alone, and the gate with egress billing.
COUNTED_MODES = ("plain", "passthrough", "credits", "metered")
CONFIGURATIONS = {
    "passthrough": "a pass-through middleware (the floor of any ASGI middleware)",
    "credits": "`MeteringMiddleware(require_credits=True)`",
    "metered": "`MeteringMiddleware(require_credits=True, meter_egress=True)`",
}


# -- The servers (subprocesses) -----------------------------------------------------------------


# The head of the trivial app's answer as egress bills it (the status line, its two headers, the
# blank line; uvicorn's own date and server headers are not billed).
OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\n"


def build_app(mode: str) -> Any:
    """The trivial app, wrapped in the middleware when ``mode`` is ``metered``."""
    from usagemeter import Actor, MeteringService
    from usagemeter.asgi import MeteringMiddleware

    service = MeteringService()  # the shipped prices; memory only
    actors = {b"bench": Actor("bench"), b"broke": Actor("broke")}
    service.set_actor_current_month_usage_total(actors[b"broke"], 25_000_000)  # temp_free: spent
    # The bench actor has an account, as any user the middleware has billed: a check of a user
    # never charged resolves the plan every time (the service caches nothing for it).
    service.increment_usage(actors[b"bench"], "kv:write", 1)
    report: dict[str, Any] = {"stats": dict}  # what the exempt stats path answers

    async def trivial(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == STATS_PATH:
            body = json.dumps(report["stats"]()).encode()
        else:
            body = b"ok"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def actor(scope: dict[str, Any]) -> Actor | None:
        for name, value in scope["headers"]:
            if name == b"x-user":
                return actors.get(value)
        return None

    if mode == "plain":
        return trivial
    if mode == "passthrough":  # the floor of any middleware: one more coroutine per request

        async def passthrough(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await trivial(scope, receive, send)

        return passthrough
    middleware = MeteringMiddleware(
        trivial,
        service,
        actor=actor,
        require_credits=mode in ("metered", "credits"),
        meter_egress=mode in ("metered", "egress"),
        egress_usage_type=EGRESS_TYPE,
    )

    def stats_of() -> dict[str, Any]:
        usage = service.get_actor_current_month_usage_details(actors[b"bench"])["usage"]
        return {"middleware": middleware.stats.as_dict(), "billed_units": usage.get(EGRESS_TYPE, {})}

    report["stats"] = stats_of
    return middleware


def serve(mode: str, port: int, http: str, loop: str) -> None:
    """Run one server until killed (``--serve``)."""
    import uvicorn

    uvicorn.run(
        build_app(mode),
        host="127.0.0.1",
        port=port,
        http=http,
        loop=loop,
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=3600,  # the client's connection idles while the other server is driven
    )


@dataclass
class Server:
    mode: str
    port: int
    process: subprocess.Popen[bytes]

    def cpu_ns(self) -> int:
        """CPU time of the server's main thread (the event loop), ns."""
        with open(f"/proc/{self.process.pid}/schedstat") as stat:
            return int(stat.read().split()[0])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(mode: str, http: str, loop: str) -> Server:
    port = free_port()
    command = [sys.executable, __file__, "--serve", mode, "--port", str(port), "--http", http, "--loop", loop]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Server(mode, port, process)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the {mode} server did not start") from None
            time.sleep(0.05)


# -- The client ---------------------------------------------------------------------------------


def request_bytes(path: str = "/", user: str | None = "bench") -> bytes:
    actor = "" if user is None else f"x-user: {user}\r\n"
    return f"GET {path} HTTP/1.1\r\nhost: bench\r\n{actor}\r\n".encode()


def one_request(port: int, path: str = "/", user: str | None = "bench") -> tuple[int, bytes]:
    """One request on a new connection: (status, body)."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(request_bytes(path, user))
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, flags=re.IGNORECASE).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += connection.recv(65536)
        return int(head.split()[1]), body


class Client:
    """One keep-alive connection, requests pipelined in batches, two batches in flight."""

    def __init__(self, port: int, depth: int) -> None:
        self.connection = socket.create_connection(("127.0.0.1", port))
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.depth = depth
        self.batch = request_bytes() * depth
        self.response_length = self._learn_response_length()

    def _learn_response_length(self) -> int:
        """Every answer of the trivial app has the same length (the date header is fixed-width)."""
        self.connection.sendall(request_bytes())
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.connection.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(OK_STATUS.strip()), head
        while len(body) < 2:
            body += self.connection.recv(65536)
        assert body == b"ok", body
        return len(head) + 4 + 2

    def run(self, batches: int) -> tuple[float, list[bytes]]:
        """Send ``batches`` x depth requests; return the wall seconds and what came back."""
        connection, batch = self.connection, self.batch
        expected = batches * self.depth * self.response_length
        batch_bytes = self.depth * self.response_length
        chunks: list[bytes] = []
        received = 0
        sent = min(2, batches)
        started = time.perf_counter()
        connection.sendall(batch * sent)
        while received < expected:
            chunk = connection.recv(1 << 20)
            if not chunk:
                raise RuntimeError("the server closed the connection")
            chunks.append(chunk)
            before = received // batch_bytes
            received += len(chunk)
            completed = received // batch_bytes - before
            for _ in range(completed):
                if sent < batches:
                    connection.sendall(batch)
                    sent += 1
        seconds = time.perf_counter() - started
        return seconds, chunks

    def close(self) -> None:
        self.connection.close()


@dataclass
class Samples:
    requests_per_second: list[float] = field(default_factory=list)
    cpu_us_per_request: list[float] = field(default_factory=list)
    client_cpu_share: list[float] = field(default_factory=list)
    requests: int = 0


def timed_round(server: Server, client: Client, batches: int, samples: Samples | None) -> int:
    requests = batches * client.depth
    cpu_before, client_before = server.cpu_ns(), time.process_time()
    seconds, chunks = client.run(batches)
    cpu_ns, client_cpu = server.cpu_ns() - cpu_before, time.process_time() - client_before
    answered = b"".join(chunks).count(OK_STATUS)
    if answered != requests:
        raise AssertionError(f"{server.mode}: {answered} answers were 200 of {requests}")
    if samples is not None:
        samples.requests_per_second.append(requests / seconds)
        samples.cpu_us_per_request.append(cpu_ns / requests / 1000)
        samples.client_cpu_share.append(client_cpu / seconds)
        samples.requests += requests
    return requests


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- The run ------------------------------------------------------------------------------------


STACKS = {"httptools-uvloop": ("httptools", "uvloop"), "h11-asyncio": ("h11", "asyncio")}


@dataclass
class StackResult:
    """One server stack's rounds: the plain and the metered server's samples, and the counters."""

    stack: str
    samples: dict[str, Samples]
    counters: dict[str, int]
    instructions: dict[str, float] | None = None  # per request, by mode (None: no valgrind)

    def paired(self, figure: str) -> list[float]:
        """Metered over plain, round by round (both measured within a second of each other, so
        the machine's other load cancels out better than in a ratio of medians)."""
        plain: list[float] = getattr(self.samples["plain"], figure)
        metered: list[float] = getattr(self.samples["metered"], figure)
        return [m / p for m, p in zip(metered, plain, strict=True)]


def bench_stack(stack: str, args: argparse.Namespace) -> StackResult:
    http, loop = STACKS[stack]
    servers: dict[str, Server] = {}
    try:
        for mode in ("plain", "metered"):
            servers[mode] = start_server(mode, http, loop)  # in the try: a failed start stops both
        # Checked before timing.
        assert one_request(servers["plain"].port) == (200, b"ok")
        assert one_request(servers["metered"].port) == (200, b"ok")
        status, body = one_request(servers["metered"].port, user="broke")
        assert status == 402 and json.loads(body)["error"] == "insufficient_funds", (status, body)
        metered_sent = 2  # the two checks above went through the gate
        clients = {mode: Client(server.port, args.depth) for mode, server in servers.items()}
        metered_sent += 1  # each client learns the answer's length from one request
        batches = max(1, args.requests // args.depth)
        samples = {mode: Samples() for mode in servers}
        for mode in servers:  # warm-up, not counted
            metered_sent += timed_round(servers[mode], clients[mode], batches, None) * (mode == "metered")
        for round_number in range(args.rounds):
            order = ("plain", "metered") if round_number % 2 == 0 else ("metered", "plain")
            for mode in order:
                sent = timed_round(servers[mode], clients[mode], batches, samples[mode])
                metered_sent += sent if mode == "metered" else 0
        log(
            f"{stack}: "
            + ", ".join(
                f"{mode} {statistics.median(samples[mode].requests_per_second):,.0f} req/s, "
                f"{statistics.median(samples[mode].cpu_us_per_request):.2f} µs CPU/request"
                for mode in servers
            )
        )
        for client in clients.values():
            client.close()
        # Checked after timing: every metered request was gated and billed its head and 2 bytes.
        status, body = one_request(servers["metered"].port, path=STATS_PATH, user=None)
        stats = json.loads(body)
        counters = stats["middleware"]
        assert counters["requests_metered"] == metered_sent, (counters, metered_sent)
        assert counters["refused_insufficient_funds"] == 1, counters
        assert counters["egress_billing_errors"] == 0, counters
        answered = metered_sent - 1  # the 402 is not billed
        assert counters["egress_responses_billed"] == answered, (counters, answered)
        billed = len(OK_HEAD) + 2  # response_head_bytes of trivial's answer, and its body
        assert counters["egress_bytes_billed"] == billed * answered, counters
        assert stats["billed_units"]["units"] == billed * answered, stats
        assert stats["billed_units"]["count"] == answered, stats
    finally:
        for server in servers.values():
            server.process.terminate()
        for server in servers.values():
            server.process.wait(30)
    result = StackResult(stack, samples, counters)
    if shutil.which("valgrind") is not None and not args.no_instructions:
        small, large = (256, 1024) if args.quick else (1024, 4096)
        result.instructions = {
            mode: instructions_per_request(mode, stack, args.depth, small, large) for mode in COUNTED_MODES
        }
        log(f"{stack}: instructions per request {result.instructions}")
    return result


def in_process(passes: int, calls: int) -> dict[str, float]:
    """The middleware's own cost without a server: both apps called in this process with a no-op
    ``send``, passes interleaved, µs per request (best pass: the least disturbed)."""
    import asyncio

    apps = {mode: build_app(mode) for mode in ("plain", "metered")}
    scope = {
        "type": "http",
        "path": "/",
        "method": "GET",
        "headers": [(b"host", b"bench"), (b"x-user", b"bench")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    async def run() -> dict[str, float]:
        best = dict.fromkeys(apps, float("inf"))
        for _ in range(passes):
            for mode, app in apps.items():
                started = time.perf_counter()
                for _ in range(calls):
                    await app(scope, receive, send)
                best[mode] = min(best[mode], (time.perf_counter() - started) / calls * 1e6)
        return best

    return asyncio.run(run())


def instructions_per_request(mode: str, stack: str, depth: int, small: int, large: int) -> float:
    """User-space instructions per request of a server run under callgrind: counted, not timed,
    so the machine's other load does not move them. Two runs (``small`` and ``large`` requests)
    and the difference divided by the difference in requests: start-up and shutdown cancel out."""
    http, loop = STACKS[stack]
    counts = []
    for requests in (small, large):
        port = free_port()
        command = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            *("--serve", mode, "--port", str(port), "--http", http, "--loop", loop),
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300  # start-up under valgrind is slow
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the {mode} server did not start under valgrind") from None
                    time.sleep(0.2)
            client = Client(port, depth)
            client.run(max(1, requests // depth))
            client.close()
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        match = re.search(r"Collected : (\d+)", stderr)
        if match is None:
            raise RuntimeError(f"callgrind printed no count:\n{stderr}")
        counts.append(int(match.group(1)))
    return (counts[1] - counts[0]) / (max(1, large // depth) - max(1, small // depth)) / depth


def versions() -> str:
    import usagemeter
    import uvicorn

    parts = [f"usagemeter {usagemeter.__version__}", f"uvicorn {uvicorn.__version__}"]
    for name in ("httptools", "uvloop", "h11"):
        try:
            module = __import__(name)
            parts.append(f"{name} {module.__version__}")
        except ImportError:
            pass
    return ", ".join(parts)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    low, _, high = statistics.quantiles(values, n=4)
    return low, statistics.median(values), high


def render(
    results: list[StackResult], own: dict[str, float], args: argparse.Namespace, command: str, seconds: float
) -> list[str]:
    lines = [
        "<!-- asgi -->",
        f"Run on {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {seconds:.0f} s; "
        f"Python {sys.version.split()[0]}, {versions()}; {os.cpu_count()} CPUs, load average "
        f"{', '.join(f'{value:.2f}' for value in os.getloadavg())} at the end.",
        f"- Command: {command}",
        "- Servers: for each stack, two uvicorn processes (one worker each, no access log) serving a "
        "trivial pure ASGI app (`200 ok`, 2 body bytes); the metered one wraps it in "
        "`MeteringMiddleware(require_credits=True, meter_egress=True, "
        f'egress_usage_type="{EGRESS_TYPE}")` over `MeteringService()` (shipped prices, memory '
        "only): every request is checked (`has_any_usage`) and its 2 bytes billed (one "
        "`increment_usage`). Its `actor(scope)` reads the `x-user` header into a prebuilt `Actor`. "
        "`httptools-uvloop` is what `uvicorn[standard]` runs; `h11-asyncio` is plain `uvicorn`.",
        f"- Client: this process, one keep-alive connection per server, raw sockets, {args.depth} "
        f"pipelined requests a batch, two batches in flight; {args.rounds} rounds of "
        f"{max(1, args.requests // args.depth) * args.depth:,} requests per server, alternating "
        "(order swapped each round), after a warm-up round.",
        "- Figures: medians over the rounds. *Server CPU* is the server's main thread "
        "(`/proc/PID/schedstat`), which does all of uvicorn's work; unlike requests/s it does not "
        "move with the client's share of the 2 cores. The *metered / plain* ratios are taken "
        "round by round (the two servers ran within a second of each other) and summarized by "
        "their median and quartiles, which the machine's other load disturbs least.",
        "",
        "| stack | server | requests/s | server CPU µs/request | client CPU share |",
        "|---|---|---:|---:|---:|",
    ]
    for result in results:
        for mode, label in (("plain", "plain"), ("metered", "with MeteringMiddleware")):
            sample = result.samples[mode]
            lines.append(
                f"| {result.stack} | {label} | {statistics.median(sample.requests_per_second):,.0f} | "
                f"{statistics.median(sample.cpu_us_per_request):.2f} | "
                f"{statistics.median(sample.client_cpu_share):.0%} |"
            )
    lines += [
        "",
        "Instructions per request (user space, counted by callgrind on a server under valgrind: "
        "the figure the machine's other load cannot move; two runs per server, of "
        f"{'256 and 1,024' if args.quick else '1,024 and 4,096'} requests, the difference in "
        "instructions divided by the difference in requests, so start-up and shutdown cancel out). "
        "The goal is judged on it:",
        "",
        f"| stack | server | instructions | the middleware's | / plain | goal <= {1 + GOAL:.2f} |",
        "|---|---|---:|---:|---:|---|",
    ]
    for result in results:
        if result.instructions is None:
            lines.append(f"| {result.stack} | not measured (no valgrind, or --no-instructions) | | | | |")
            continue
        plain_count = result.instructions["plain"]
        lines.append(f"| {result.stack} | the trivial app alone | {plain_count:,.0f} | | | |")
        for mode, label in CONFIGURATIONS.items():
            count = result.instructions[mode]
            ratio = count / plain_count
            goal = "" if mode == "passthrough" else ("met" if ratio <= 1 + GOAL else "missed")
            lines.append(
                f"| {result.stack} | {label} | {count:,.0f} | {count - plain_count:+,.0f} | "
                f"**{ratio:.3f}** | {goal} |"
            )
    lines += [
        "",
        "Timed (medians; the ratios round by round, with their quartiles):",
        "",
        "| stack | middleware's server CPU per request | metered / plain CPU (quartiles) | "
        "metered / plain requests/s (quartiles) |",
        "|---|---:|---:|---:|",
    ]
    for result in results:
        cpu = {mode: statistics.median(result.samples[mode].cpu_us_per_request) for mode in result.samples}
        low, median, high = quartiles(result.paired("cpu_us_per_request"))
        rps_low, rps_median, rps_high = quartiles(result.paired("requests_per_second"))
        lines.append(
            f"| {result.stack} | {cpu['metered'] - cpu['plain']:+.2f} µs | {median:.3f} "
            f"({low:.3f}-{high:.3f}) | {rps_median:.3f} ({rps_low:.3f}-{rps_high:.3f}) |"
        )
    lines += [
        "",
        f"- The middleware's own cost, without a server (both apps called in one process with a "
        f"no-op `send`, best of {args.rounds if not args.quick else 3} interleaved passes of 20,000): "
        f"**{own['metered'] - own['plain']:.2f} µs** a request ({own['plain']:.2f} µs for the app "
        f"alone, {own['metered']:.2f} µs wrapped): the actor function, the class call, "
        "`has_any_usage` (0.1 µs), the send wrapper and `increment_usage` (0.3 µs).",
    ]
    checked = ", ".join(
        f"{result.stack} {result.counters['requests_metered']:,} requests, "
        f"{result.counters['egress_bytes_billed']:,} bytes in {result.counters['egress_responses_billed']:,} "
        "charges"
        for result in results
    )
    lines += [
        "",
        "- Checked: every response of every round was `200 ok`; each metered server answered an "
        "actor without budget 402 `insufficient_funds`, counted every metered request and billed "
        f"exactly 2 bytes per answer, as its ledger recorded ({checked}).",
        "<!-- /asgi -->",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_240, help="requests per server per round")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--depth", type=int, default=32, help="pipelined requests per batch")
    parser.add_argument("--stacks", default=",".join(STACKS), help=f"comma-separated, of {', '.join(STACKS)}")
    parser.add_argument(
        "--no-instructions", action="store_true", help="skip the instruction counts (valgrind)"
    )
    parser.add_argument("--http", help=argparse.SUPPRESS)  # a server's (--serve)
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--write-results", nargs="?", const=str(RESULTS), metavar="PATH")
    parser.add_argument("--made-by", help=argparse.SUPPRESS)  # --made-by="make bench-asgi"
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.http, args.loop)
        return
    if args.quick:
        args.requests, args.rounds = 2_048, 4
    stacks = args.stacks.split(",")
    for stack in stacks:
        if stack not in STACKS:
            parser.error(f"unknown stack {stack!r}: choose from {', '.join(STACKS)}")
    started = time.perf_counter()
    own = in_process(args.rounds if not args.quick else 3, 20_000)
    log(f"in process: plain {own['plain']:.2f} µs, metered {own['metered']:.2f} µs a request")
    results = [bench_stack(stack, args) for stack in stacks]
    argv = [arg for arg in sys.argv[1:] if not arg.startswith("--made-by") and not arg.startswith("--write")]
    command = "`" + " ".join(["python", "benches/asgi.py", *argv]) + "`"
    if args.made_by:
        command = f"`{args.made_by}` (which runs {command})"
    section = render(results, own, args, command, time.perf_counter() - started)
    print("\n".join(section))
    if args.write_results:
        write_section(
            Path(args.write_results),
            "asgi",
            "ASGI gate: a trivial app with and without MeteringMiddleware",
            section,
        )
        log(f"wrote {args.write_results}")


if __name__ == "__main__":
    main()
