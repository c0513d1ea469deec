"""Contracts both processes import: run-dir layout, checkpoint format, heartbeat schema,
tokenizer and exit/status vocabulary.

This package must import fast and must never import torch at module level: the supervisor and
``gpt2sup status`` import it and must not pay for torch.
"""
