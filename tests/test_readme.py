"""Every Python block (```python or ```py) of the README and of docs/*.md runs as written, in a temporary working
folder; the README stays short, keeps the commands CI runs, and docs/index.md links every page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = ("python", "py")
# Blocks that are not Python say what they are: shell commands, program output, config files.
NOT_PYTHON = ("bash", "sh", "text", "yaml", "json")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in order; an indented fence (inside a list item) counts too."""
    blocks, language, lines = [], None, []
    for line in text.split("\n"):
        fence = re.match(r"\s*```(\S*)\s*$", line)
        if fence and language is None:
            language, lines = fence.group(1), []
        elif fence and not fence.group(1):
            blocks.append((language, "\n".join(lines) + "\n"))
            language = None
        elif language is not None:
            lines.append(line)
    assert language is None, "a fenced block is not closed"
    return blocks


BLOCKS = [(doc.relative_to(ROOT).as_posix(), i, code) for doc in DOCS
          for i, (language, code) in enumerate(fenced_blocks(doc.read_text())) if language in PYTHON]


@pytest.mark.parametrize(("doc", "index", "code"), BLOCKS, ids=[f"{d}[{i}]" for d, i, _ in BLOCKS])
def test_documented_example_runs(doc, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compiled = compile(code, f"{doc}[block {index}]", "exec")
    exec(compiled, {"__name__": "__doc_example__"})  # noqa: S102 - running the documented examples is the point


def test_the_block_reader_finds_python_and_py_fences_and_nothing_else():
    text = "```python\na = 1\n```\n- item:\n  ```py\n  b = 2\n  ```\n```bash\nls\n```\n```\nout\n```\n"
    assert fenced_blocks(text) == [("python", "a = 1\n"), ("py", "  b = 2\n"), ("bash", "ls\n"), ("", "out\n")]
    assert {d for d, _, _ in BLOCKS} >= {"README.md", "docs/core.md", "docs/importance.md", "docs/remote.md"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_every_block_says_what_it_is(doc):
    """No block is left unlabelled or labelled as something the tests do not run without saying why."""
    languages = [language for language, _ in fenced_blocks(doc.read_text())]
    unknown = [lang for lang in languages if lang not in PYTHON + NOT_PYTHON]
    assert not unknown, f"{doc.name}: fences {unknown}; label them python (run by the tests) or {NOT_PYTHON}"


def test_readme_is_short_and_keeps_the_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    test_command = ci[ci.index("python3 -m venv"):]
    assert test_command in readme
    assert "pip install -q -e . && hfprune demo" in readme


def test_docs_index_links_every_page():
    index = (ROOT / "docs" / "index.md").read_text()
    linked = set(re.findall(r"\]\(([\w.-]+\.md)(?:#[\w-]*)?\)", index))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert pages <= linked, f"docs/index.md does not link {sorted(pages - linked)}"


def test_relative_links_point_to_files_that_exist():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken
