"""Tests of ``supervisor/policy/``.

Each module of ``supervisor/policy/`` and the tests that cover it (paths under ``tests/``):

- ``disk``: ``supervisor/policy/test_policy.py`` (through ``policy.<name>``)
- ``exits``: ``supervisor/policy/test_policy.py`` (through ``policy.<name>``)
- ``hangs``: ``supervisor/policy/test_policy.py`` (through ``policy.<name>``)
- ``measures``: ``supervisor/policy/test_policy.py`` (through ``policy.<name>``)
- ``peers``: ``supervisor/policy/test_policy.py`` (through ``policy.<name>``)
- ``remote``: ``supervisor/policy/test_remote_policy.py``
- ``restarts``: ``supervisor/policy/test_policy.py`` (through ``policy.<name>``)
- ``reuse``: ``supervisor/policy/test_policy.py`` (through ``policy.<name>``)
- ``stops``: ``supervisor/policy/test_policy.py`` (through ``policy.<name>``)
- ``stragglers``: ``supervisor/policy/test_policy.py``, ``supervisor/test_stragglers.py``
- ``timeouts``: ``supervisor/policy/test_policy.py`` (through ``policy.<name>``)
"""
