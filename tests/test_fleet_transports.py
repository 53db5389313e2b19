"""The shared ledger over each transport a user can name: TLS (`rediss://`) and a Unix socket
(`unix://`), on real redis-server processes; and the URLs that are refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from redis_support import RedisServer, free_port
from usagemeter import Actor, MeteringService, StoreClosedError, StoreUnavailableError


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl must be on PATH for the TLS test (Debian's openssl package)")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _meter_and_reopen(url: str) -> None:
    """One charge through `url`, flushed and closed, is what a second worker reads."""
    alice = Actor("alice")
    with MeteringService(store=url, snapshot_interval=0.05, connect_timeout=5) as first:
        assert first.increment_usage(alice, "tts:chars", 7, 700) == 700
        first.flush()
    with MeteringService(store=url, connect_timeout=5) as second:
        usage = second.get_actor_current_month_usage_details(alice)["usage"]
        assert usage["tts:chars"] == {"units": 7, "cost": 700, "count": 1}


def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    tls_port = free_port()
    tls_args = (
        *("--tls-port", str(tls_port)),
        *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
        *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
    )
    with RedisServer(extra_args=tls_args):
        # A self-signed certificate: `#insecure` skips its verification (redis-rs's URL flag).
        _meter_and_reopen(f"rediss://127.0.0.1:{tls_port}/0#insecure")
        # Verified, it is refused: an unknown issuer is never trusted silently.
        with pytest.raises(StoreUnavailableError, match=r"rediss://127\.0\.0\.1"):
            MeteringService(store=f"rediss://127.0.0.1:{tls_port}/0", connect_timeout=2)


def test_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    with RedisServer(extra_args=("--unixsocket", str(socket_path), "--unixsocketperm", "700")):
        _meter_and_reopen(f"unix://{socket_path}")


@pytest.mark.parametrize(
    ("store", "backend", "message"),
    [
        ("redis://127.0.0.1:1/0", "sled", "shared ledger"),
        ("./a-directory", "redis", "needs a redis://"),
        ("./a-directory", "redis-cluster", "needs a redis://"),
        ("http://127.0.0.1:1/0", None, "http://"),
        ("redis://", None, "not a Redis URL"),
        ("redis://127.0.0.1:notaport/0", None, "not a Redis URL"),
        ("redis://127.0.0.1:1/abc", "redis", "not a Redis URL"),
        ("unix://", None, "not a Redis URL"),
        ("redis://127.0.0.1:1,redis://127.0.0.1:2", None, "redis-cluster"),
        ("redis://127.0.0.1:1,nonsense", "redis-cluster", "not a Redis URL"),
    ],
)
def test_mismatched_store_and_backend_are_refused(
    store: str, backend: str | None, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        MeteringService(store=store, store_backend=backend)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_a_forked_child_refuses_a_worker_opened_before_the_fork(redis_url: str) -> None:
    """A pre-fork server must open its worker after the fork: the parent's sync thread and
    connection are not in the child, which refuses every call instead of metering unsynced."""
    from test_reliability import wait_child

    service = MeteringService(store=redis_url, snapshot_interval=0.05)
    alice = Actor("alice")
    service.increment_usage(alice, "t", 1, 10)
    pid = os.fork()
    if pid == 0:
        try:
            service.increment_usage(alice, "t", 1, 10)
            os._exit(1)
        except StoreClosedError as error:
            os._exit(0 if "fork" in str(error) else 2)
        except BaseException:
            os._exit(3)
    assert wait_child(pid) == 0
    assert service.increment_usage(alice, "t", 1, 10) == 20
    service.close()
    with MeteringService(store=redis_url) as reopened:
        assert reopened.get_actor_current_month_usage_details(alice)["usage"]["total"] == 20


def test_copy_store_refuses_a_malformed_url_before_reading_anything(tmp_path: Path) -> None:
    from usagemeter._core import copy_store

    with pytest.raises(ValueError, match="not a Redis URL"):
        copy_store(str(tmp_path / "none"), "redis://127.0.0.1:notaport/0")
    with pytest.raises(ValueError, match="not a Redis URL"):
        copy_store("redis://", str(tmp_path / "copy"))
    assert list(tmp_path.iterdir()) == []
