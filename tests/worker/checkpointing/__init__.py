"""Tests of ``worker/checkpointing/``.

Each module of ``worker/checkpointing/`` and the tests that cover it (paths under ``tests/``):

- ``async_save``: ``worker/checkpointing/test_async_checkpoint.py``
- ``checkpoint``: ``worker/checkpointing/test_async_checkpoint.py``, ``worker/checkpointing/test_checkpointing.py``, ``worker/checkpointing/test_final_save.py`` (and 2 more)
- ``checkpoint_write``: ``shared/test_checkpoint_crc_fill.py``
- ``hf_import``: ``worker/test_hf_interop.py``
- ``replay``: ``worker/checkpointing/test_replay.py``
- ``rng``: ``worker/test_units.py``
- ``run_identity_check``: ``worker/checkpointing/test_run_identity_check.py``
- ``train_state``: ``worker/checkpointing/test_async_checkpoint.py``, ``worker/checkpointing/test_final_save.py``
"""
