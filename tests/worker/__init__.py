"""Tests of ``worker/``: end-to-end training runs and the modules at the package's top.

Each module of ``worker/`` and the tests that cover it (paths under ``tests/``):

- ``checkpoint_probe``: ``worker/test_checkpoint_probe.py``
- ``errors``: ``worker/checkpointing/test_run_identity_check.py``, ``worker/runtime/test_compute_clock.py``, ``worker/test_hf_interop.py`` (and 1 more)
- ``evaluations``: ``worker/test_evaluations_e2e.py``
- ``finetune_dolly``: ``test_cli_examples.py``, ``worker/test_finetune.py``
- ``hellaswag``: ``worker/test_hellaswag.py``
- ``model``: ``supervisor/test_pretrained_rejected.py``, ``test_cli_examples.py``, ``worker/checkpointing/test_async_checkpoint.py`` (and 7 more)
- ``prepare``: ``worker/test_prepare.py``
- ``train_gpt2``: ``test_cli_examples.py``, ``worker/runtime/test_compiler_import.py``, ``worker/runtime/test_compute_clock.py`` (and 3 more)
"""
