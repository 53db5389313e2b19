"""A real uvicorn server on a free loopback port, in a thread, for the ASGI tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

STARTUP_SECONDS = 20.0


@contextlib.contextmanager
def serve(app: Any, **config: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a port the kernel picks) until the block ends;
    yields the base URL. The server is shut down and its thread joined on the way out."""
    options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "lifespan": "off", "log_level": "warning"}
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn stopped before it started (see its log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(STARTUP_SECONDS)
            raise RuntimeError(f"uvicorn did not start within {STARTUP_SECONDS} s")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STARTUP_SECONDS)
        if thread.is_alive():
            raise RuntimeError("uvicorn did not shut down")
