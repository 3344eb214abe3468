#!/usr/bin/env python3
"""Kahuna, the Kowabunga orchestrator: `python kahuna.py [-c kahuna.yml] [-d] [-m]`."""

import sys

from kahuna.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
