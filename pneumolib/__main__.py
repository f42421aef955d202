"""Entry point of `python -m pneumolib`."""

import sys

from pneumolib.cli import main

if __name__ == "__main__":
    sys.exit(main())
