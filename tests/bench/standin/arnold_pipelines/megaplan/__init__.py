"""STAND-IN for the remote megaplan core (`python -m arnold_pipelines.megaplan`), test double.

The real core is the public repository peteromallet/Arnold, commit 80208d744, packages
`arnold` and `arnold_pipelines`. Facts this stand-in follows, and the real files they are from:

- The module is `arnold_pipelines.megaplan` (arnold_pipelines/megaplan/__main__.py:
  "Allow running as python -m arnold_pipelines.megaplan"); there is no
  `arnold/pipelines/megaplan` at that commit. The bench installs only `arnold_pipelines`.
- Argument parsing (arnold_pipelines/megaplan/cli/parser.py and chain/__init__.py
  `build_chain_parser`): `chain start --spec P [--one] [--no-git-refresh] [--no-push]
  [--project-dir D]`; `status [--plan N] [--project-dir D]`; the plan steps with their own
  flags (`execute --confirm-destructive --user-approved --retry-blocked-tasks`, `feedback
  {edit,show,search,workflow}`, `override {abort,force-proceed,add-note,replan,
  recover-blocked,...}`); argparse refuses anything else with exit 2.
- `status` prints `{"success": true, "step": "status", "plan", "state", "next_step",
  "valid_next", ...}` (cli/status_view.py `_build_status_payload`); errors print
  `{"success": false, "error", "message"}` and exit 1 (cli/__init__.py `error_response`).
- `next_step` follows the workflow table (_core/workflow_data.py `WORKFLOW`).
- The chain state file and its API (chain/spec.py, chain/git_ops.py): see chain/spec.py here.
- Importing the real core takes 1.6-2.4 s on a bench runner. This stand-in sleeps
  `import_seconds` at import (default 2.0) so measurements show what a real runner costs.
  Tests set it to 0: `/etc/megaplan-standin.json` `{"import_seconds": 0}`, or the
  environment variable MEGAPLAN_STANDIN_IMPORT_SECONDS.
"""

import json as _json
import os as _os
import time as _time

DEFAULT_IMPORT_SECONDS = 2.0
SETTINGS_FILE = "/etc/megaplan-standin.json"


def _import_seconds():
    raw = _os.environ.get("MEGAPLAN_STANDIN_IMPORT_SECONDS")
    if raw is None:
        try:
            with open(SETTINGS_FILE, encoding="utf-8") as fh:
                raw = _json.load(fh).get("import_seconds")
        except (OSError, ValueError, AttributeError):
            raw = None
    try:
        return max(0.0, float(DEFAULT_IMPORT_SECONDS if raw is None else raw))
    except (TypeError, ValueError):
        return DEFAULT_IMPORT_SECONDS


_delay = _import_seconds()
if _delay:
    _time.sleep(_delay)
