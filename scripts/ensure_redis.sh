#!/usr/bin/env bash
# The shared ledger's tests and benchmarks start real redis-server processes
# (tests/redis_support.py): install Debian's redis-server package when the machine lacks it.
set -euo pipefail
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    exit 0
fi
command -v apt-get >/dev/null || {
    echo "redis-server is needed for the tests of the shared ledger: install Redis 7 (Debian: apt-get install redis-server)" >&2
    exit 1
}
as_root=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then
    as_root=(sudo)
fi
echo "installing Debian's redis-server (the tests start their own servers on loopback)"
# (`${a[@]+"${a[@]}"}`: an empty array under `set -u` on any bash.)
${as_root[@]+"${as_root[@]}"} apt-get update
${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server
