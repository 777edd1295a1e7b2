"""Entry point: ``python -m bench transport [URL] [--tasks N] [--backlog N[,N...]] [--drain N] [--runs N]``."""

from __future__ import annotations

import sys

from bench.transport import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
