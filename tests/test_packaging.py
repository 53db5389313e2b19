"""Packaging metadata: the license, the single-sourced version, what an sdist carries.

The wheel itself (manylinux, auditwheel) is checked by `make wheel`, which needs a release build.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import usagemeter

ROOT = Path(__file__).resolve().parent.parent


def toml(name: str) -> dict[str, Any]:
    with (ROOT / name).open("rb") as file:
        return tomllib.load(file)


PROJECT = toml("pyproject.toml")["project"]
PACKAGE = toml("Cargo.toml")["package"]


def test_the_license_file_is_mit_and_is_declared() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "the usagemeter authors" in text
    assert PROJECT["license"] == PACKAGE["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    # PyPI refuses a license classifier beside a PEP 639 license expression.
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]


def test_the_installed_metadata_carries_the_license() -> None:
    metadata = importlib.metadata.metadata("usagemeter")
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]


def test_the_version_lives_in_cargo_toml_only() -> None:
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert usagemeter.__version__ == importlib.metadata.version("usagemeter") == PACKAGE["version"]


def test_the_classifiers_name_the_supported_pythons() -> None:
    assert PROJECT["requires-python"] == ">=3.11"
    versions = [c.rsplit(" :: ", 1)[1] for c in PROJECT["classifiers"] if re.fullmatch(r".*:: 3\.\d+", c)]
    assert versions == ["3.11", "3.12", "3.13"]
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in versions


def test_the_classifiers_are_known_to_pypi() -> None:
    trove_classifiers = pytest.importorskip("trove_classifiers")
    assert set(PROJECT["classifiers"]) <= trove_classifiers.classifiers


def test_the_readme_names_the_rust_version_a_source_build_needs() -> None:
    assert f"Rust {PACKAGE['rust-version']}" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_two_commands_are_two() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## The two commands\n.*?```sh\n(.*?)```", readme, re.S)
    assert block is not None
    assert len([line for line in block.group(1).splitlines() if line.strip()]) == 2


MATURIN = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which("maturin")


@pytest.mark.skipif(MATURIN is None, reason="no maturin beside this Python or on PATH")
def test_the_sdist_carries_what_a_source_build_needs(tmp_path: Path) -> None:
    """`maturin sdist` (no compiling, about a second): the files a source build needs, and LICENSE."""
    assert MATURIN is not None
    subprocess.run([MATURIN, "sdist", "--out", str(tmp_path)], cwd=ROOT, check=True, capture_output=True)
    (sdist,) = tmp_path.glob("usagemeter-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    needed = {"LICENSE", "README.md", "pyproject.toml", "Cargo.toml", "Cargo.lock", "build.rs", "src/lib.rs"}
    needed |= {"python/usagemeter/__init__.py", "python/usagemeter/_core.pyi", "python/usagemeter/py.typed"}
    needed |= {f"costmaps/{path.name}" for path in (ROOT / "costmaps").glob("*.json")}
    assert needed <= names
    assert not [name for name in names if name.startswith(("target/", ".venv"))]
