"""STAND-IN for `python -m pip`: appends argv as one JSON line to /var/log/standin-pip.log, exits 0."""
import json
import sys

with open("/var/log/standin-pip.log", "a", encoding="utf-8") as log:
    log.write(json.dumps(["-m", "pip", *sys.argv[1:]]) + "\n")
sys.exit(0)
