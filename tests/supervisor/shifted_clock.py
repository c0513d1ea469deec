"""A wall clock that is off, or that steps, for the clock tests (docs/reliability.md: no verdict
depends on two wall clocks agreeing). ``time.monotonic`` is never touched, as on a real machine.

Two roles read their own variables (a supervisor's environment reaches its ranks too):
- ``GPT2SUP_TEST_<ROLE>_CLOCK_SHIFT_S``: seconds added to ``time.time()``;
- ``GPT2SUP_TEST_<ROLE>_CLOCK_STEP_FILE``: when set, the shift applies only once that file exists
  (a step of the clock in the middle of a run).
<ROLE> is ``RANK`` or ``SUPERVISOR``. As ``gpt2sup run --worker tests.supervisor.shifted_clock``
it shifts the ranks' clock and runs ``worker.train_gpt2``; ``SUPERVISOR_MAIN`` runs ``gpt2sup``
with the supervisor's clock shifted.
"""
from __future__ import annotations

import os
import sys
import time

_STEP_CHECK_EVERY_S = 0.05


def install(role: str) -> None:
    """Replace ``time.time`` in this process by one shifted as the role's variables say."""
    shift = float(os.environ.get(f"GPT2SUP_TEST_{role}_CLOCK_SHIFT_S", "0") or 0)
    step_file = os.environ.get(f"GPT2SUP_TEST_{role}_CLOCK_STEP_FILE")
    real = time.time
    state = {"stepped": step_file is None, "checked": 0.0}

    def shifted() -> float:
        if not state["stepped"] and time.monotonic() - state["checked"] >= _STEP_CHECK_EVERY_S:
            state["checked"] = time.monotonic()
            state["stepped"] = os.path.exists(step_file)
        return real() + (shift if state["stepped"] else 0.0)

    time.time = shifted


# `python -c SUPERVISOR_MAIN <gpt2sup args>`: gpt2sup with the supervisor's clock shifted.
SUPERVISOR_MAIN = """
import sys
from tests.supervisor.shifted_clock import install
install("SUPERVISOR")
sys.argv = ["gpt2sup"] + sys.argv[1:]
from supervisor.cli import main
main()
"""

if __name__ == "__main__":
    install("RANK")
    from worker.train_gpt2 import main

    sys.exit(main())
