"""gpt2sup supervisor: launch torchrun, watch, validate checkpoints, restart.

Never imports ``worker``; talks to it only through the files in ``shared.run_dir`` and signals.
"""
