"""Settings for the whole suite.

Tests use local data they write themselves: no test may wait on the network. ``GPT2SUP_OFFLINE``
makes the worker's dataset lookup (HellaSwag, Dolly) stop at the cache instead of trying a
download, in this process and in every worker process a test starts (they inherit it).
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("GPT2SUP_OFFLINE", "1")

# The real S3 server (SeaweedFS on loopback), for the store's tests and the supervisor's.
from tests.s3_server import aws_env, private_aws_env, private_s3_server, s3_server  # noqa: F401 - fixtures, used by name


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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Order and group the tests for the parallel run (``--dist loadgroup``).

    * The long end-to-end tests (``slow``) go first, so the last minutes are not one worker
      finishing a long test while the others idle (longest first is the classic schedule).
    * The tests of a module that shares a module-scoped fixture (an expensive training run) form
      one xdist group: one worker builds the fixture once instead of every worker once.
    Deterministic, so every worker collects the same order (xdist requires it).
    """
    shared_module_fixture: set[str] = set()
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        for defs in (info.name2fixturedefs.values() if info else ()):
            if any(d.scope == "module" for d in defs):
                shared_module_fixture.add(item.module.__name__)
    for item in items:
        if item.module.__name__ in shared_module_fixture:
            item.add_marker(pytest.mark.xdist_group(name=item.module.__name__))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order kept
