#!/usr/bin/env bash
# `make dev` run from inside someone's activated virtualenv (and conda env) must build into this
# project's .venv and leave that environment untouched (issue 8). `make test` runs it; it costs a
# throwaway venv and one incremental `make dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
project=$PWD
test -x .venv/bin/python || { echo "no .venv: run 'make dev' first"; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# With pip, as a user's venv has: without it `maturin develop` would fail there, not install.
.venv/bin/python -m venv "$scratch/venv"
listing() { (cd "$scratch/venv" && find . -path '*/__pycache__' -prune -o -print | sort); }
listing >"$scratch/before"

# "Activated", as `source bin/activate` and conda leave it; the PATH without the .venv/bin that
# an enclosing `make` put in front.
inherited_path=${PATH#"$project/.venv/bin:"}
env VIRTUAL_ENV="$scratch/venv" CONDA_PREFIX="$scratch/venv" PATH="$scratch/venv/bin:$inherited_path" \
    make --no-print-directory -C "$project" dev

listing >"$scratch/after"
if ! diff -u "$scratch/before" "$scratch/after"; then
    echo "FAIL: 'make dev' changed the activated venv (above: what it added or removed)"
    exit 1
fi
if "$scratch/venv/bin/python" -c "import usagemeter" 2>/dev/null; then
    echo "FAIL: the activated venv can import usagemeter"
    exit 1
fi
where=$(.venv/bin/python -c "import usagemeter._core as m; print(m.__file__)")
case $where in
    "$project"/*) ;;
    *) echo "FAIL: .venv imports usagemeter from $where, not from this project"; exit 1 ;;
esac
echo "ok: 'make dev' inside an activated venv built into .venv ($where) and left the venv alone"
