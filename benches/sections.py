"""Writing one benchmark's section of RESULTS.md, between `<!-- tag -->` and `<!-- /tag -->`."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, tag: str, title: str, lines: list[str]) -> None:
    """Replace the section marked `tag` in `path` with `lines` (which begin and end with the
    markers), or add it at the end under a `## title` heading."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    block = "\n".join(lines)
    pattern = re.compile(rf"<!-- {re.escape(tag)} -->.*?<!-- /{re.escape(tag)} -->", flags=re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
