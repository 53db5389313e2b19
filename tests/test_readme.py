"""The README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from usagemeter import Actor, MeteringService

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_example_runs() -> None:
    example = re.search(r"## Example\n\n```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert example is not None, "README.md has no example block"
    namespace: dict[str, object] = {}
    exec(compile(example.group(1), "README.md example", "exec"), namespace)
    service, alice = namespace["service"], namespace["alice"]
    assert isinstance(service, MeteringService) and isinstance(alice, Actor)
    details = service.get_actor_current_month_usage_details(alice)
    output_tokens = details["usage"]["claude:claude-sonnet-4-5-20250929:output_tokens"]
    assert output_tokens["units"] == 3_100 + 12 + 40 + 7
    assert output_tokens["count"] == 1 + 3
