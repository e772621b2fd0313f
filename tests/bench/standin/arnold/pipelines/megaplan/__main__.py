"""STAND-IN entry point: `python -m arnold.pipelines.megaplan ...` (test double)."""
import sys

from arnold.pipelines.megaplan.cli import main

sys.exit(main(sys.argv[1:]))
