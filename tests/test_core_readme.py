"""The README's fifteen-line example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs() -> None:
    text = README.read_text()
    match = re.search(r"## Fifteen lines\n\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its example"
    code = match.group(1)
    assert len(code.strip().splitlines()) <= 16
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)
    result = namespace["result"]
    weights = result.weights  # type: ignore[attr-defined]
    assert abs(float(weights.sum()) - 1) < 1e-12
    s_star = namespace["s_star"]
    adv = namespace["advantages"]
    assert bool((s_star == adv.clamp_min(0).amin(0)).all())  # type: ignore[union-attr]
