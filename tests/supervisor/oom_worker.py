"""A worker entry point (for ``gpt2sup run --worker``) that the kernel's OOM killer kills inside a
memory cgroup of its own, the way SLURM and Kubernetes confine a job.

It moves itself into the cgroup named by ``GPT2SUP_TEST_OOM_CGROUP`` (a directory holding
``cgroup.procs`` and a memory limit), waits long enough for the supervisor to see it there, then
allocates past the limit.
"""
import os
import time
from pathlib import Path

if __name__ == "__main__":
    Path(os.environ["GPT2SUP_TEST_OOM_CGROUP"], "cgroup.procs").write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("GPT2SUP_TEST_OOM_DELAY", "3")))
    block = bytearray(1 << 30)  # zero-filled: every page is touched, far past the limit
    time.sleep(60)
