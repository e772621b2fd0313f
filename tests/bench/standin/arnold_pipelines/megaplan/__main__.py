"""STAND-IN entry point: `python -m arnold_pipelines.megaplan ...` (test double).

The real core's arnold_pipelines/megaplan/__main__.py (peteromallet/Arnold at 80208d744) calls
`cli.main()` and exits with its status; so does this one. The import is relative so the same
files also work installed as `arnold.pipelines.megaplan` (one test installs them that way).
"""
import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
