"""Tests of ``supervisor/``: the product end to end (``test_*_e2e.py``, ``test_chaos_soak.py``) and the modules at the package's top.

Each module of ``supervisor/`` and the tests that cover it (paths under ``tests/``):

- ``cli``: ``supervisor/commands/test_export_cli.py``, ``supervisor/commands/test_verify_cli.py``, ``supervisor/views/test_report.py`` (and 1 more)
- ``journal``: ``supervisor/test_journal.py``
- ``journal_writer``: ``supervisor/test_journal.py``
- ``messages``: ``supervisor/commands/test_run_cmd.py``
- ``output_guard``: ``supervisor/test_stop_signals.py``
- ``run_config``: ``supervisor/attempts/test_torchrun.py``, ``supervisor/attempts/test_torchrun_attempts.py``, ``supervisor/multinode/test_multi_node.py`` (and 3 more)
- ``run_lock``: ``supervisor/attempts/test_process_tree.py``, ``supervisor/multinode/test_multi_node.py``, ``supervisor/test_journal.py``
- ``run_loop``: ``supervisor/test_run_loop.py``
- ``run_start``: ``supervisor/test_run_loop.py``
- ``stop_signals``: ``supervisor/test_stop_signals.py``
- ``timestamps``: ``supervisor/checkpoints/test_checkpoint_selection.py`` (the quarantine record's ``quarantined_at``)
- ``wiring``: ``supervisor/test_run_loop.py``
"""
