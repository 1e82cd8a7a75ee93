"""benchmarks/gpu_serving.py is for GPU machines only: without CUDA it refuses in one line and writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_serving.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script would really run")
def test_gpu_script_refuses_cleanly_without_cuda(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "r.json")], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "needs an NVIDIA GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
