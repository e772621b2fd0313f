"""STAND-IN alias entry point: `python -m arnold_pipelines.megaplan ...`."""
import sys

from arnold.pipelines.megaplan.cli import main

sys.exit(main(sys.argv[1:]))
