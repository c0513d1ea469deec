"""A worker entry point (for ``gpt2sup run --worker``) that starts and never writes a heartbeat:
the shape of a rank stuck in an import, a rendezvous or a data download."""
import time

if __name__ == "__main__":
    time.sleep(3600)
