"""Tests of ``worker/data/``.

Each module of ``worker/data/`` and the tests that cover it (paths under ``tests/``):

- ``datasets``: ``worker/test_hellaswag.py``
- ``finetune_data``: ``worker/test_finetune.py``
- ``shards``: ``worker/checkpointing/test_checkpointing.py``, ``worker/data/test_data.py``, ``worker/data/test_loader_seek.py`` (and 1 more)
"""
