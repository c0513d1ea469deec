"""``--compile``: keep torch.compile's caches in the run directory, so a relaunch does not compile
from scratch.

A restarted attempt compiles the same model with the same shapes again. Inductor caches what it
compiled (FX graphs, AOT autograd results, generated kernels) on disk, by default under /tmp per
user, where a node's reboot, a container or another machine of the job loses it. Pointing the
cache at ``<log_dir>/compile_cache`` makes the second attempt read what the first one wrote, for a
bare run (the worker calls this) as for ``gpt2sup run`` (``supervisor.attempts.torchrun.build_env`` calls it on
the workers' environment) (every rank shares the directory: inductor writes its entries
atomically). Values already in the environment win: a site-wide cache stays in charge.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_NAME = "compile_cache"


def use_run_dir_compile_cache(run_root: Path, environ: dict[str, str] | None = None) -> Path:
    """Set inductor's cache directory (and turn its local caches on) unless already set. Must run
    before ``torch._dynamo`` is imported (the first optimizer does that): its import settles the
    directory by writing the default into the environment. Returns the cache directory in use."""
    env = os.environ if environ is None else environ
    cache = Path(env.get("TORCHINDUCTOR_CACHE_DIR") or Path(run_root).absolute() / CACHE_DIR_NAME)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
    env.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    env.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    env.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
    return cache
