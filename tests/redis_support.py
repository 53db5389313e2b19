"""Real Redis servers for the tests of the Redis store: no mocks, no Python client.

`RedisServer` runs one `redis-server` process on a free loopback port, in a temporary directory of
its own, with an fsync-always append-only file, so a test can stop or SIGKILL it and start it again
on the same port and directory and see what survived. `RedisCluster` runs three master nodes.
Tests inspect keys with `command(...)`, which runs `redis-cli`; readiness is checked with a raw
RESP `PING`, so the `redis` package from PyPI is not needed.

The fixtures `redis_server`, `redis_url` (function scope) and `redis_cluster` (module scope) live
here and `conftest.py` imports them. They fail, never skip, when `redis-server` is missing: CI
(`.ci/run`) installs Debian's `redis-server`, and a machine without it must do the same.

No server outlives the test process: fixtures close their servers, `atexit` closes any left over,
and a server started from the main thread is SIGKILLed by the kernel if the test process dies.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest

HOST = "127.0.0.1"
INSTALL_HINT = (
    "redis-server and redis-cli must be on PATH for the Redis tests: install Debian's package "
    "(`apt-get update && apt-get install -y redis-server`), as .ci/run does"
)
START_TIMEOUT = 30.0  # seconds until a started server must answer PING
STOP_TIMEOUT = 10.0  # seconds after SIGTERM before stop() sends SIGKILL
CLUSTER_TIMEOUT = 60.0  # seconds until every node reports cluster_state:ok
CLUSTER_BUS_OFFSET = 10_000  # a cluster node also listens on its port + 10000
CLUSTER_NODE_ARGS = (
    *("--cluster-enabled", "yes"),
    *("--cluster-config-file", "nodes.conf"),  # relative: in the node's own --dir
    *("--cluster-node-timeout", "5000"),
)
_PR_SET_PDEATHSIG = 1


class RedisUnavailable(RuntimeError):
    """`redis-server` or `redis-cli` is not on PATH."""


class RedisStartError(RuntimeError):
    """A server exited, or did not answer PING in time, after being started."""


class RedisCommandError(RuntimeError):
    """`redis-cli` failed: no connection, or an error reply."""


def redis_binaries() -> tuple[str, str]:
    """The paths of `redis-server` and `redis-cli`; `RedisUnavailable` when either is missing."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise RedisUnavailable(INSTALL_HINT)
    return server, cli


def require_redis() -> None:
    """Fail the current test (never skip it) when Redis is not installed."""
    try:
        redis_binaries()
    except RedisUnavailable as error:
        pytest.fail(str(error), pytrace=False)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def free_cluster_port(taken: Sequence[int] = ()) -> int:
    """A free port whose cluster-bus port (+10000) is free too, clear of `taken` and their buses."""
    avoid = set(taken) | {port + CLUSTER_BUS_OFFSET for port in taken}
    for _ in range(200):
        port = free_port()
        bus = port + CLUSTER_BUS_OFFSET
        if bus <= 65_535 and port not in avoid and bus not in avoid and _bindable(bus):
            return port
    raise RuntimeError("no free port pair (port, port + 10000) on 127.0.0.1")


def ping(port: int, timeout: float = 1.0) -> bool:
    """True when a server on `port` answers `PING` with `+PONG` (not `-LOADING`), over raw RESP.

    A server started with `--requirepass` answers `-NOAUTH` instead: that counts as up (it may
    still be loading a large append-only file; the tests' files are small).
    """
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as connection:
            connection.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = connection.recv(256)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    return reply == b"+PONG\r\n" or reply.startswith(b"-NOAUTH")


def _die_with_parent() -> None:
    """In the child before exec: the kernel SIGKILLs it when the thread that forked it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _in_main_thread() -> bool:
    """A server started from another thread would die with that thread, so it gets no PDEATHSIG."""
    return threading.current_thread() is threading.main_thread()


def pid_alive(pid: int) -> bool:
    """True while a process (or a zombie not yet reaped) has this id."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_OPEN: set[RedisServer] = set()


@atexit.register
def _close_all() -> None:
    """The fallback: close every server a test forgot (fixtures close theirs)."""
    for server in list(_OPEN):
        server.close()


class RedisServer:
    """One real `redis-server` on 127.0.0.1, in its own directory, started at construction.

    `stop()`/`kill()` end the process and keep the directory; `start()` starts it again on the
    same port and directory, so the append-only file is reloaded. `close()` (also the context
    manager's exit) stops it and removes the directory.
    """

    def __init__(
        self,
        *,
        appendonly: bool = True,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        start: bool = True,
    ) -> None:
        self._server, self._cli = redis_binaries()
        self._fixed_port = port is not None
        self._port = port if port is not None else free_port()
        self._appendonly = appendonly
        self._extra_args = tuple(extra_args)
        self.directory = Path(tempfile.mkdtemp(prefix="usagemeter-redis-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._has_run = False  # once it has answered PING, its port is its own for good
        _OPEN.add(self)
        if start:
            try:
                self.start()
            except BaseException:
                self.close()
                raise

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT/0`, for `MeteringService(store=...)`."""
        return f"redis://{HOST}:{self._port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def pid(self) -> int | None:
        """The running process's id, or None when stopped."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def arguments(self) -> list[str]:
        """The `redis-server` command line."""
        return [
            self._server,
            "--port", str(self._port),
            "--bind", HOST,
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            "--save", "",
            "--appendonly", "yes" if self._appendonly else "no",
            "--appendfsync", "always",
            *self._extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        """Start the process (same port and directory as before) and wait until it answers PING."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self._port} is already running")
        self._process = None
        for attempt in range(5):
            try:
                self._launch()
                return
            except RedisStartError:
                # Another process may have taken the port between free_port() and the bind:
                # a server that never ran may move to another port; a restarted one may not.
                if self._fixed_port or self._has_run or attempt == 4 or not self._port_taken():
                    raise
                self._port = free_port()

    def _port_taken(self) -> bool:
        return "Address already in use" in self.log_tail()

    def _launch(self) -> None:
        # The child's output (e.g. a configuration error, printed before logging starts) goes
        # to a file; our handle is closed at once, the child keeps its own.
        with open(self.directory / "stdout.log", "ab") as output:
            self._process = subprocess.Popen(
                self.arguments(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                preexec_fn=_die_with_parent if _in_main_thread() else None,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not ping(self._port):
            if self._process.poll() is not None:
                self._reap()
                raise RedisStartError(f"redis-server on port {self._port} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RedisStartError(
                    f"redis-server on port {self._port} did not answer PING in {START_TIMEOUT:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)
        self._has_run = True

    def stop(self) -> None:
        """SIGTERM and wait for the exit; SIGKILL after 10 s. A no-op when not running."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL, as a crash: whatever was not yet written to the AOF is lost."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        self._reap()

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait()
            self._process = None

    def close(self) -> None:
        """Stop the server (SIGKILL, since its data is being thrown away) and remove its directory."""
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)
        _OPEN.discard(self)

    def command(self, *args: str, cluster: bool = False) -> str:
        """`redis-cli -p PORT --raw ARGS...`'s stdout, stripped; `RedisCommandError` on an error reply.

        `cluster=True` adds `-c`, following MOVED and ASK redirections.
        """
        argv = [self._cli, "-h", HOST, "-p", str(self._port), "--raw", "-e"]
        if cluster:
            argv.append("-c")
        result = subprocess.run(
            [*argv, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise RedisCommandError(
                f"redis-cli {' '.join(args)} on port {self._port} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result.stdout.strip()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log and of its captured output, for error messages."""
        text = ""
        for path in (self.directory / "stdout.log", self.log_path):
            try:
                text += path.read_text(errors="replace")
            except OSError:
                pass
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisServer(port={self._port}, pid={self.pid}, directory={str(self.directory)!r})"


class RedisCluster:
    """Three master nodes (no replicas) on loopback, each in its own directory, AOF on.

    `url` is the first node's `redis://127.0.0.1:P1`, `urls` every node's. `command(...)` runs
    `redis-cli -c` against the first node.
    """

    SIZE = 3

    def __init__(self) -> None:
        self.nodes: list[RedisServer] = []
        try:
            ports: list[int] = []
            for _ in range(self.SIZE):
                ports.append(free_cluster_port(ports))
            for port in ports:
                self.nodes.append(RedisServer(port=port, extra_args=CLUSTER_NODE_ARGS))
            self._create()
            self.wait_ok()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.nodes[0].port}"

    @property
    def urls(self) -> list[str]:
        return [f"redis://{HOST}:{node.port}" for node in self.nodes]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def _create(self) -> None:
        _, cli = redis_binaries()
        addresses = [f"{HOST}:{node.port}" for node in self.nodes]
        result = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RedisStartError(f"redis-cli --cluster create failed:\n{result.stdout}\n{result.stderr}")

    def cluster_info(self, node: RedisServer) -> dict[str, str]:
        """`CLUSTER INFO` of one node as a dict."""
        info: dict[str, str] = {}
        for line in node.command("CLUSTER", "INFO").splitlines():
            key, _, value = line.strip().partition(":")
            if key:
                info[key] = value
        return info

    def wait_ok(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Wait until every node reports `cluster_state:ok` and knows all three nodes."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [self.cluster_info(node) for node in self.nodes]
            if all(
                info.get("cluster_state") == "ok" and info.get("cluster_known_nodes") == str(self.SIZE)
                for info in infos
            ):
                return
            if time.monotonic() > deadline:
                raise RedisStartError(f"no cluster_state:ok on every node after {timeout:.0f} s: {infos}")
            time.sleep(0.1)

    def command(self, *args: str) -> str:
        """`redis-cli -c -p P1 --raw ARGS...`'s stdout, stripped (redirections are followed)."""
        return self.nodes[0].command(*args, cluster=True)

    def start(self) -> None:
        """Start every stopped node again (each reloads its AOF and nodes.conf) and wait for ok."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_ok()

    def stop(self) -> None:
        """SIGTERM every node (SIGKILL after 10 s); directories are kept for `start()`."""
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        """Kill every node and remove their directories."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh `redis-server` (AOF on, fsync always) for one test, killed and removed after it."""
    require_redis()
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """`redis://127.0.0.1:PORT/0` of this test's `redis_server`."""
    return redis_server.url


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    """A three-master cluster shared by one test module, killed and removed after it."""
    require_redis()
    with RedisCluster() as cluster:
        yield cluster
