"""Tests of ``supervisor/checkpoints/``.

Each module of ``supervisor/checkpoints/`` and the tests that cover it (paths under ``tests/``):

- ``background_validation``: ``supervisor/checkpoints/test_background_validation.py``
- ``checkpoint_selection``: ``supervisor/checkpoints/test_checkpoint_selection.py``
- ``checkpoint_validation``: ``supervisor/checkpoints/test_checkpoint_validation.py``
- ``disk_guard``: ``supervisor/attempts/test_torchrun_attempts.py``, ``supervisor/multinode/test_multi_node.py``
- ``hf_export``: ``supervisor/test_pretrained_rejected.py``, ``worker/test_hf_interop.py``
- ``remote_checkpoints``: ``supervisor/test_remote_e2e.py`` (end to end against a real S3 server)
- ``remote_sync``: ``supervisor/checkpoints/test_remote_sync.py``
- ``resume_choice``: ``supervisor/test_run_loop.py``, ``supervisor/test_run_e2e.py``, ``supervisor/test_unsupported_format.py``
"""
