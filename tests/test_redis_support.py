"""The real-Redis helpers themselves (`redis_support`): servers start, persist, die and clean up."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis_support import (
    RedisCluster,
    RedisCommandError,
    RedisServer,
    free_port,
    pid_alive,
    ping,
    require_redis,
)


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    assert 1024 <= port <= 65_535
    assert not ping(port)


def test_server_answers_ping_and_set_get(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0" == redis_server.url
    assert ping(redis_server.port)
    assert redis_server.command("PING") == "PONG"
    assert redis_server.command("SET", "greeting", "hello world") == "OK"
    assert redis_server.command("GET", "greeting") == "hello world"
    assert redis_server.command("GET", "missing") == ""
    assert redis_server.command("CONFIG", "GET", "appendonly").splitlines() == ["appendonly", "yes"]
    assert redis_server.command("CONFIG", "GET", "appendfsync").splitlines() == ["appendfsync", "always"]


def test_an_error_reply_raises(redis_server: RedisServer) -> None:
    redis_server.command("SET", "text", "not a number")
    with pytest.raises(RedisCommandError, match="not an integer"):
        redis_server.command("INCR", "text")


def test_stop_then_start_reloads_the_aof_on_the_same_port(redis_server: RedisServer) -> None:
    port, directory = redis_server.port, redis_server.directory
    redis_server.command("SET", "kept", "1")
    redis_server.stop()
    assert not redis_server.running and not ping(port)
    redis_server.start()
    assert (redis_server.port, redis_server.directory) == (port, directory)
    assert redis_server.command("GET", "kept") == "1"
    assert (directory / "appendonlydir").is_dir()


def test_kill_leaves_no_process_and_keeps_fsynced_writes(redis_server: RedisServer) -> None:
    redis_server.command("SET", "acknowledged", "yes")
    pid = redis_server.pid
    assert pid is not None and pid_alive(pid)
    redis_server.kill()
    assert redis_server.pid is None and not pid_alive(pid) and not ping(redis_server.port)
    redis_server.start()
    assert redis_server.command("GET", "acknowledged") == "yes"


def test_without_aof_a_restart_loses_everything() -> None:
    require_redis()
    with RedisServer(appendonly=False) as server:
        server.command("SET", "gone", "1")
        server.stop()
        server.start()
        assert server.command("EXISTS", "gone") == "0"


def test_close_removes_the_process_and_the_directory() -> None:
    require_redis()
    with RedisServer() as server:
        pid, directory = server.pid, server.directory
        assert pid is not None and directory.is_dir()
        assert Path(server.log_path).is_file()
    assert not pid_alive(pid)
    assert not directory.exists()


def test_missing_redis_fails_and_never_skips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="install Debian's package"):
        require_redis()


def test_cluster_is_ok_with_three_masters(redis_cluster: RedisCluster) -> None:
    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.ports[0]}"
    assert redis_cluster.urls == [f"redis://127.0.0.1:{port}" for port in redis_cluster.ports]
    for node in redis_cluster.nodes:
        assert node.command("CLUSTER", "INFO").splitlines()[0].strip() == "cluster_state:ok"
        assert (node.directory / "nodes.conf").is_file()
    nodes = redis_cluster.command("CLUSTER", "NODES").splitlines()
    masters = [line for line in nodes if "master" in line.split()[2].split(",")]
    assert len(nodes) == len(masters) == 3


def test_cluster_follows_redirections(redis_cluster: RedisCluster) -> None:
    slots = {redis_cluster.command("CLUSTER", "KEYSLOT", key) for key in ("{a}x", "{b}y")}
    assert len(slots) == 2
    assert redis_cluster.command("SET", "{a}x", "1") == "OK"
    assert redis_cluster.command("SET", "{b}y", "2") == "OK"
    assert redis_cluster.command("GET", "{a}x") == "1"
    assert redis_cluster.command("GET", "{b}y") == "2"
    # Each key is stored once, on the node that owns its slot.
    assert sum(int(node.command("DBSIZE")) for node in redis_cluster.nodes) == 2
