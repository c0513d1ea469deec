"""--compile: inductor's caches live in the run directory (shared/compile_cache.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.compile_cache import use_run_dir_compile_cache

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_the_cache_goes_into_the_run_directory_unless_one_is_set(tmp_path):
    env: dict[str, str] = {}
    cache = use_run_dir_compile_cache(tmp_path / "run", env)
    assert cache == (tmp_path / "run" / "compile_cache").absolute()
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(cache) and env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"
    assert env["TORCHINDUCTOR_AUTOGRAD_CACHE"] == "1" and env["TRITON_CACHE_DIR"] == str(cache / "triton")
    site = {"TORCHINDUCTOR_CACHE_DIR": "/site/cache", "TORCHINDUCTOR_FX_GRAPH_CACHE": "0"}
    assert use_run_dir_compile_cache(tmp_path / "run", site) == Path("/site/cache")
    assert site["TORCHINDUCTOR_CACHE_DIR"] == "/site/cache" and site["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "0"


@pytest.mark.slow
def test_inductor_uses_it_when_set_before_dynamo_is_imported(tmp_path):
    code = (f"from shared.compile_cache import use_run_dir_compile_cache; use_run_dir_compile_cache({str(tmp_path)!r}); "
            "import torch._dynamo; from torch._inductor.runtime.cache_dir_utils import cache_dir; print(cache_dir())")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("TORCHINDUCTOR", "TRITON"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "compile_cache")
