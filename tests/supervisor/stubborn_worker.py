"""A worker entry point (for ``gpt2sup run --worker``) that ignores SIGTERM: the shape of a rank
stuck inside a collective that cannot reach its step boundary to save."""
import signal
import time

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3600)
