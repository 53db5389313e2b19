#!/usr/bin/env bash
# Checks what `make wheel` wrote: every wheel manylinux-compliant and self-contained, and each
# given Python installs one (no compiler, no source build) and meters with it.
#     scripts/check_wheel.sh DIST_DIR [PYTHON...]   (default: each of python3.11-3.13 that runs)
set -euo pipefail
dist=$(realpath "$1")
shift
plat=${MANYLINUX:-manylinux_2_17}_$(uname -m)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

wheels=("$dist"/*.whl)
test -e "${wheels[0]}" || { echo "FAIL: no wheel in $dist"; exit 1; }
for wheel in "${wheels[@]}"; do
    auditwheel show "$wheel"
    # `repair --only-plat` fails if the wheel needs more than $plat allows (a newer glibc
    # symbol, a library outside the manylinux list); a library it had to copy in means the
    # wheel was not self-contained as built, which fails here too.
    rm -rf "$scratch/repaired"
    auditwheel repair --only-plat --plat "$plat" --wheel-dir "$scratch/repaired" "$wheel"
    if unzip -l "$scratch"/repaired/*.whl | grep -q '\.libs/'; then
        echo "FAIL: $wheel needs shared libraries from outside the wheel"
        exit 1
    fi
done

pythons=("$@")
if [ ${#pythons[@]} -eq 0 ]; then
    for candidate in python3.11 python3.12 python3.13; do
        "$candidate" -c '' 2>/dev/null && pythons+=("$candidate")
    done
fi
test ${#pythons[@]} -gt 0 || { echo "FAIL: no Python 3.11-3.13 to install the wheel with"; exit 1; }
version=$(unzip -p "${wheels[0]}" '*.dist-info/METADATA' | sed -n 's/^Version: //p')
cd "$scratch"  # nothing imports from the source tree
for python in "${pythons[@]}"; do
    venv="$scratch/venv-$(basename "$python")"
    "$python" -m venv "$venv"
    # Wheels only, and cargo off the PATH: a source build could not happen unnoticed.
    PATH="$venv/bin:/usr/bin:/bin" "$venv/bin/python" -m pip install --quiet --only-binary :all: \
        --find-links "$dist" "usagemeter==$version"
    "$venv/bin/python" - "$venv" <<'PY'
import sys
from pathlib import Path

import usagemeter._core
from usagemeter import Actor, MeteringService

assert Path(usagemeter._core.__file__).is_relative_to(sys.argv[1]), usagemeter._core.__file__
total = MeteringService().increment_usage(Actor("alice", email="alice@example.com"), "kv:write", 10)
assert total > 0
print(f"ok: {Path(usagemeter._core.__file__).name} on Python {sys.version.split()[0]}: {total} µ¢")
PY
done
