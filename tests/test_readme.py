"""Every ```python block of the README and of docs/*.md runs as written (in a temporary working folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = [
    (doc.relative_to(ROOT).as_posix(), i, code)
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), re.DOTALL))
]


@pytest.mark.parametrize(("doc", "index", "code"), BLOCKS, ids=[f"{d}[{i}]" for d, i, _ in BLOCKS])
def test_documented_example_runs(doc, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compiled = compile(code, f"{doc}[python block {index}]", "exec")
    exec(compiled, {"__name__": "__doc_example__"})  # noqa: S102 - running the documented examples is the point
