"""Tests of ``supervisor/multinode/``.

Each module of ``supervisor/multinode/`` and the tests that cover it (paths under ``tests/``):

- ``endings``: ``supervisor/multinode/test_multi_node.py``
- ``node_coordination``: ``supervisor/multinode/test_node_coordination.py``
- ``slurm``: ``supervisor/multinode/test_slurm.py``
"""
