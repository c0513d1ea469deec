"""Tests of ``worker/runtime/``.

Each module of ``worker/runtime/`` and the tests that cover it (paths under ``tests/``):

- ``compiler_import``: ``worker/runtime/test_compiler_import.py``
- ``compute_clock``: ``worker/runtime/test_compute_clock.py``
- ``device_setup``: ``worker/runtime/test_device_setup.py``
- ``distributed``: ``worker/test_units.py``
- ``lifetime``: ``worker/runtime/test_lifetime.py``
- ``startup_clock``: ``worker/runtime/test_lifetime.py``
- ``telemetry``: ``worker/runtime/test_lifetime.py``, ``worker/runtime/test_tensorboard.py``, ``worker/test_units.py`` (and 1 more)
- ``tensorboard_log``: ``worker/runtime/test_tensorboard.py``
- ``worker_lock``: ``worker/test_worker_resilience.py`` (a second trainer exits 8)
"""
