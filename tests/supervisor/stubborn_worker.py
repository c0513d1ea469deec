"""A worker entry point (for ``gpt2sup run --worker``) that ignores SIGTERM: the shape of a rank
stuck inside a collective that cannot reach its step boundary to save.

Once SIGTERM is ignored it creates ``<--log_dir>/stubborn.ready``: a test must not send its stop
before that, or the signal lands while the interpreter is still starting and simply kills it.
"""
import signal
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if "--log_dir" in sys.argv:
        (Path(sys.argv[sys.argv.index("--log_dir") + 1]) / "stubborn.ready").touch()
    time.sleep(3600)
