"""Tests of ``supervisor/commands/``.

Each module of ``supervisor/commands/`` and the tests that cover it (paths under ``tests/``):

- ``convert_cmd``: ``supervisor/commands/test_verify_cli.py`` (``gpt2sup convert``)
- ``export_cmd``: ``supervisor/commands/test_export_cli.py``
- ``report_cmd``: ``supervisor/views/test_report.py``
- ``run_cmd``: ``supervisor/commands/test_run_cmd.py``
- ``status_cmd``: ``supervisor/views/test_status.py``
- ``stop_cmd``: ``supervisor/test_stop.py``
- ``verify_cmd``: ``shared/test_scan_checkpoints.py``, ``supervisor/commands/test_verify_cli.py``, ``supervisor/views/test_report.py``
"""
