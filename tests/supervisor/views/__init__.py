"""Tests of ``supervisor/views/``.

Each module of ``supervisor/views/`` and the tests that cover it (paths under ``tests/``):

- ``dashboard``: ``supervisor/views/test_dashboard.py``
- ``report_html``: ``supervisor/views/test_report.py``
- ``run_history``: ``supervisor/views/test_run_history.py``
- ``snapshot``: ``supervisor/multinode/test_multi_node.py``, ``supervisor/test_stragglers.py``, ``supervisor/views/test_dashboard.py`` (and 1 more)
"""
