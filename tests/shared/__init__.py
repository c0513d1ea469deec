"""Tests of ``shared/``, the contracts both processes import.

Each module of ``shared/`` and the tests that cover it (paths under ``tests/``):

- ``atomic_io``: ``supervisor/test_journal.py``, ``supervisor/test_stop.py``, ``supervisor/views/test_status.py`` (and 1 more)
- ``checkpoint_crc``: ``shared/test_checkpoint_crc_fill.py``, ``supervisor/checkpoints/test_checkpoint_validation.py``, ``worker/checkpointing/test_async_checkpoint.py``
- ``checkpoint_format``: ``shared/test_checkpoint_loading.py``, ``supervisor/test_unsupported_format.py``, ``worker/checkpointing/test_checkpointing.py`` (and 2 more)
- ``checkpoint_loading``: ``shared/test_checkpoint_loading.py``
- ``compile_cache``: ``worker/runtime/test_compile_cache.py``
- ``events``: ``supervisor/views/test_dashboard.py``, ``supervisor/views/test_status.py``
- ``exit_codes``: ``shared/test_exit_codes.py``
- ``heartbeat``: ``shared/test_heartbeat.py``
- ``hf_files``: ``supervisor/commands/test_export_cli.py``, ``supervisor/test_pretrained_rejected.py``, ``worker/test_hf_interop.py``
- ``hf_gpt2``: ``supervisor/commands/test_export_cli.py``, ``worker/test_hf_interop.py``
- ``hf_tokenizer``: ``worker/test_hf_interop.py``
- ``process_identity``: ``supervisor/attempts/test_orphans.py``, ``supervisor/attempts/test_process_tree.py``, ``supervisor/test_resilience_e2e.py`` (and 1 more)
- ``run_dir``: ``shared/test_scan_checkpoints.py``, ``supervisor/attempts/test_heartbeat_reader.py``, ``supervisor/attempts/test_process_tree.py`` (and 20 more)
- ``run_identity``: ``shared/test_run_identity.py``
- ``supervisor_state``: ``supervisor/attempts/test_orphans.py``, ``supervisor/multinode/test_multi_node.py``, ``supervisor/test_journal.py`` (and 3 more)
- ``tokenizer``: ``shared/test_tokenizer.py``
- ``vocabulary``: ``shared/test_heartbeat.py``, ``supervisor/checkpoints/test_checkpoint_selection.py``, ``supervisor/checkpoints/test_checkpoint_validation.py`` (and 5 more)
- ``remote.checksums``: ``shared/test_remote_records.py``, ``shared/test_remote_store.py``
- ``remote.errors``: ``shared/test_remote_records.py``, ``shared/test_remote_store.py``
- ``remote.local_store``: ``shared/test_remote_store.py``
- ``remote.records``: ``shared/test_remote_records.py``, ``shared/test_remote_store.py``
- ``remote.s3_store``: ``shared/test_remote_records.py``
- ``remote.store``: ``shared/test_remote_store.py`` (every backend against the same tests)
- ``remote.uri``: ``shared/test_remote_records.py``
"""
