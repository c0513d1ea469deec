"""Settings for the whole suite.

Tests use local data they write themselves: no test may wait on the network. ``GPT2SUP_OFFLINE``
makes the worker's dataset lookup (HellaSwag, Dolly) stop at the cache instead of trying a
download, in this process and in every worker process a test starts (they inherit it).
"""
from __future__ import annotations

import os

os.environ.setdefault("GPT2SUP_OFFLINE", "1")
