"""Tests of ``supervisor/attempts/``.

Each module of ``supervisor/attempts/`` and the tests that cover it (paths under ``tests/``):

- ``attempt``: ``supervisor/multinode/test_multi_node.py``, ``supervisor/test_run_loop.py``
- ``evidence``: ``supervisor/attempts/test_process_tree.py``
- ``heartbeat_reader``: ``supervisor/attempts/test_heartbeat_reader.py``
- ``memory_cgroup``: ``supervisor/attempts/test_memory_cgroup.py``
- ``orphans``: ``supervisor/attempts/test_orphans.py``
- ``process_tree``: ``supervisor/attempts/test_process_tree.py``
- ``restart_timing``: ``supervisor/attempts/test_restart_timing.py``
- ``torchrun``: ``supervisor/attempts/test_torchrun.py``
- ``torchrun_attempts``: ``supervisor/attempts/test_torchrun_attempts.py``
"""
