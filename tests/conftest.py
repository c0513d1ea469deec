"""Settings for the whole suite.

Tests use local data they write themselves: no test may wait on the network. ``GPT2SUP_OFFLINE``
makes the worker's dataset lookup (HellaSwag, Dolly) stop at the cache instead of trying a
download, in this process and in every worker process a test starts (they inherit it).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GPT2SUP_OFFLINE", "1")

# The real S3 server (SeaweedFS on loopback), for the store's tests and the supervisor's.
from tests.s3_server import aws_env, private_aws_env, private_s3_server, s3_server  # noqa: F401 - fixtures, used by name
from tests.shared_probe_child import one_probe_child_per_module  # noqa: F401 - a fixture, used by name


def _reset_inherited_ignored_stop_signals() -> None:
    """Give this process, and so every process a test starts, the default SIGHUP and SIGINT.

    ``nohup``, and a non-interactive shell's background job (``cmd &``), start pytest with SIGHUP
    and/or SIGINT ignored; an ignored disposition survives ``exec``, so every supervisor, worker
    and ``status --watch`` a test launched would ignore the very signal the test sends, and the
    suite's verdict would depend on how its shell was started. The product honours an inherited
    SIG_IGN on purpose (``test_sighup_ignored_by_nohup_stays_ignored`` proves it by setting it
    explicitly); the tests decide dispositions themselves.
    """
    import signal

    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_reset_inherited_ignored_stop_signals()


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: how many tests run at once.

    Most of an end-to-end test's time is spent waiting on real processes (a torchrun start, a
    hang timeout, a kill grace), so a few more workers than cores keep the cores busy; every test
    process is pinned to one thread (OMP_NUM_THREADS=1), so they do not fight inside a test.
    ``GPT2SUP_TEST_WORKERS`` overrides the count (``-n N`` too; ``-n 0`` runs in one process).
    """
    wanted = os.environ.get("GPT2SUP_TEST_WORKERS")
    if wanted:
        return max(0, int(wanted))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores + 1)


_MODULE_FIXTURE = re.compile(r"@pytest\.fixture\(\s*scope\s*=\s*[\"']module[\"']")


@functools.cache
def _shares_a_module_fixture(test_file: str) -> bool:
    """Whether a test file defines a module-scoped fixture (an expensive run built once per module)."""
    try:
        return bool(_MODULE_FIXTURE.search(Path(test_file).read_text(encoding="utf-8")))
    except OSError:
        return False


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` with our own scopes: a file that shares a module-scoped fixture is one
    unit (one worker builds the fixture once, instead of every worker once); every other test is
    a unit of its own, so long tests spread over the workers. Scopes keep collection order (the
    slow tests first, below) instead of xdist's "most tests first".

    (xdist's ``loadgroup`` would say this with marks, but it does not group under pytest 9:
    pytest-xdist issue #1386.)
    """
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FixtureScopeScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            test_file = nodeid.split("::", 1)[0]
            return test_file if _shares_a_module_fixture(str(config.rootpath / test_file)) else nodeid

    config.option.loadscopereorder = False
    return FixtureScopeScheduling(config, log)


def pytest_collection_modifyitems(config, items) -> None:
    """The long end-to-end tests (``slow``) go first, so the last minutes are not one worker
    finishing a long test while the others idle (longest first is the classic schedule).
    Deterministic (a stable sort), so every worker collects the same order, as xdist requires."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that has a ``tmp_path``: any process still running with that directory on
    its command line (a rank whose torchrun a test killed with ``killpg``: ranks live in sessions
    of their own) is killed, with a warning naming the test. A leaked run would otherwise train on
    under every later test, slowing the suite and bending its timings."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    where = str(request.getfixturevalue("tmp_path"))  # set up before this fixture, so torn down after it
    yield
    import psutil

    me = os.getpid()
    left = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            parts = process.info["cmdline"] or ()
            if process.info["pid"] != me and any(where + os.sep in part or part.endswith(where) for part in parts):
                left.append(process)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    if left:
        psutil.wait_procs(left, timeout=10)
        warnings.warn(f"{request.node.nodeid} left {len(left)} process(es) running: "
                      f"{[p.pid for p in left]}; killed", stacklevel=1)
