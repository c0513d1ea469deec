"""A worker entry point (for ``gpt2sup run --worker``): ``worker.train_gpt2`` under another module
name, so a test can see which module a launch ran."""
import sys

from worker.train_gpt2 import main

if __name__ == "__main__":
    sys.exit(main())
