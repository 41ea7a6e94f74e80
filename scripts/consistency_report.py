#!/usr/bin/env python3
"""The migration plan's consistency report: the same command as ``federation report``."""

import sys
from pathlib import Path

try:
    import federation  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federation.cli import main

if __name__ == "__main__":
    main(["report", *sys.argv[1:]], prog_name="consistency_report.py")
