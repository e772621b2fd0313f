"""STAND-IN command line of the megaplan core (test double, offline e2e bench).

Modeled on peteromallet/Arnold at 80208d744: arnold_pipelines/megaplan/cli/parser.py (the
subcommands and their flags), chain/__init__.py `build_chain_parser` (`chain start`),
cli/status_view.py `_build_status_payload` (the status JSON) and _core/workflow_data.py
`WORKFLOW` (which step a state names next). Like the real parser, argparse refuses an unknown
subcommand or flag with exit 2, so a caller that sends what the core would refuse fails here
too. Errors are JSON on stdout `{"success": false, "error", "message"}` with exit 1.
"""

import argparse
import datetime
import json
import os
import re
import sys
import time
from pathlib import Path

from . import chain

# The plan steps of the real parser (cli/parser.py: `for name in ["plan", "prep", ...]`).
STEPS = ("plan", "prep", "critique", "revise", "gate", "finalize", "execute", "review")
# `override` takes one action positional (cli/parser.py `override_parser`).
OVERRIDE_ACTIONS = (
    "abort", "adopt-execution", "force-proceed", "add-note", "replan", "recover-blocked",
    "resume-clarify", "set-robustness", "set-profile", "set-model", "set-vendor",
)
# The other single-word steps a status may name (_core/workflow_data.py WORKFLOW).
OTHER_STEPS = ("tiebreaker", "tiebreaker-run", "tiebreaker-decide", "verify-human", "resume-clarify")
_DONE_STATES = {"done", "aborted", "cancelled", "complete", "completed"}
# state -> next steps, after _core/workflow_data.py WORKFLOW (first entry = `next_step`).
# `running`, `blocked`, `failed` and `awaiting_pr_merge` are the stand-in's scripted states
# of a plan mid-execution; they name `execute` / `review` as a finalized / executed plan does.
_WORKFLOW = {
    "initialized": ["plan"],
    "prepped": ["plan"],
    "planned": ["critique", "plan"],
    "critiqued": ["gate", "revise", "override add-note", "override force-proceed", "override abort"],
    "gated": ["finalize", "override replan"],
    "finalized": ["execute", "override replan"],
    "executed": ["review"],
    "reviewed": ["feedback"],
    "awaiting_human_verify": ["verify-human", "resume-clarify"],
    "tiebreaker_pending": ["tiebreaker-run"],
    "tiebreaker_ready": ["tiebreaker-decide"],
    "blocked": ["recover-blocked", "execute"],
}


def _emit(payload):
    print(json.dumps(payload), flush=True)


def _error(code, message):
    _emit({"success": False, "error": code, "message": message})
    return 1


def _project(args):
    return Path(getattr(args, "project_dir", None) or Path.cwd())


def _plans_root(project):
    return Path(project) / ".megaplan" / "plans"


def _read_plan(project, plan):
    path = _plans_root(project) / plan / "state.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _newest_plan(project):
    root = _plans_root(project)
    if not root.is_dir():
        return None
    candidates = [
        (p.stat().st_mtime, p.parent.name)
        for p in root.glob("*/state.json")
        if not p.parent.name.startswith(".")
    ]
    return max(candidates)[1] if candidates else None


def valid_next_for(state):
    if state in _DONE_STATES:
        return []
    if state in _WORKFLOW:
        return list(_WORKFLOW[state])
    if isinstance(state, str) and state.startswith("awaiting"):
        return ["review"]
    return ["execute"]


def next_step_for(state):
    steps = valid_next_for(state)
    return steps[0] if steps else None


def cmd_status(args):
    project = _project(args)
    # Fault injection: a remote command that never returns (the daemon's deadlines must end it).
    if chain.Control(project).read().get("hang_status"):
        print("status: hanging (hang_status in the control file)", file=sys.stderr, flush=True)
        # The hanging process may be a caller's own interpreter (the daemon's observer imports
        # the core and calls `main`), so it is named by pid, not by command line.
        (project / ".megaplan").mkdir(parents=True, exist_ok=True)
        with (project / ".megaplan" / "standin-hangs.jsonl").open("a", encoding="utf-8") as log:
            log.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:]}) + "\n")
        while True:
            time.sleep(3600)
    plan = args.plan or _newest_plan(project)
    if plan is None:
        return _error("no_plans", f"no plans under {_plans_root(project)}; run init first")
    data = _read_plan(project, plan)
    if data is None:
        return _error("plan_not_found", f"plan {plan!r} not found under {_plans_root(project)}")
    state = data.get("current_state")
    valid = valid_next_for(state)
    _emit({"success": True, "step": "status", "plan": plan, "state": state,
           "next_step": valid[0] if valid else None, "valid_next": valid})
    return 0


def _slug(text):
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")
    return slug or "plan"


def cmd_init(args):
    project = Path(args.project_dir)
    idea_file = Path(args.idea_file)
    if not idea_file.is_file():
        return _error("missing_idea_file", f"idea file not found: {args.idea_file}")
    idea = idea_file.read_text(encoding="utf-8")
    name = args.name or _slug(idea)
    existed = _read_plan(project, name) is not None
    state = "running" if args.auto_start else "initialized"
    chain.write_plan_state(project, name, state, idea=idea, robustness=args.robustness, auto_start=args.auto_start)
    chain.exclude_megaplan_dir(project)
    record = {"argv": sys.argv[1:], "cwd": os.getcwd(), "name": name, "core_module": __name__.rsplit(".", 1)[0]}
    (project / ".megaplan" / "standin-init.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _emit({"success": True, "plan": name, "state": state, "reinitialized": existed,
           "plan_dir": str(chain.plan_dir(project, name))})
    return 0


def cmd_auto(args):
    project = Path.cwd()
    if _read_plan(project, args.plan) is None:
        return _error("plan_not_found", f"plan {args.plan!r} not found under {_plans_root(project)}")
    chain.write_plan_state(project, args.plan, "running")
    record = {"argv": sys.argv[1:], "pid": os.getpid(), "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    (project / ".megaplan" / "standin-auto.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
    print(f"auto: plan {args.plan} running", flush=True)
    while True:
        time.sleep(3600)


def cmd_step(args):
    """A plan step (or override/feedback/verify action): recorded with its argv, never run."""
    project = _project(args)
    plan = args.plan or _newest_plan(project)
    if plan is None or _read_plan(project, plan) is None:
        return _error("plan_not_found", f"plan {plan!r} not found under {_plans_root(project)}")
    step = args.step
    for extra in ("override_action", "operation"):
        if getattr(args, extra, None):
            step = f"{step} {getattr(args, extra)}"
    (project / ".megaplan").mkdir(parents=True, exist_ok=True)
    with (project / ".megaplan" / "standin-steps.jsonl").open("a", encoding="utf-8") as log:
        log.write(json.dumps({"step": step, "plan": plan, "argv": sys.argv[1:],
                              "core_module": __name__.rsplit(".", 1)[0]}) + "\n")
    _emit({"success": True, "step": step, "plan": plan})
    return 0


def cmd_chain_start(args):
    try:
        return chain.run_chain(args.spec, one=args.one, git_refresh=not args.no_git_refresh)
    except chain.ChainError as exc:
        return _error(exc.code, str(exc))
    except chain.ChainStateError as exc:
        return _error(exc.code, str(exc))


def _unsupported(args):
    print(f"stand-in megaplan core: `{args.command_name}` is not implemented by the test double", file=sys.stderr)
    return 2


def build_parser():
    parser = argparse.ArgumentParser(prog="megaplan", description="STAND-IN megaplan core (test double)")
    sub = parser.add_subparsers(dest="command", required=True)

    for name in ("status", "progress", "watch"):
        p = sub.add_parser(name)
        p.add_argument("--project-dir", default=None)
        p.add_argument("--plan")
        if name == "status":
            p.add_argument("--pending-human", action="store_true")
        p.set_defaults(func=cmd_status)

    p = sub.add_parser("init")
    p.add_argument("--project-dir", required=True)
    p.add_argument("--idea-file", required=True)
    p.add_argument("--auto-start", action="store_true")
    p.add_argument("--robustness", default="standard")
    p.add_argument("--name")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("auto")
    p.add_argument("--plan", required=True)
    p.set_defaults(func=cmd_auto)

    for step in STEPS:
        p = sub.add_parser(step)
        p.add_argument("--project-dir", default=None)
        p.add_argument("--plan")
        if step == "execute":
            p.add_argument("--confirm-destructive", action="store_true")
            p.add_argument("--user-approved", action="store_true")
            p.add_argument("--retry-blocked-tasks", action="store_true")
            p.add_argument("--batch", type=int, default=None)
        if step == "review":
            p.add_argument("--confirm-self-review", action="store_true")
        p.set_defaults(func=cmd_step, step=step)

    for step in OTHER_STEPS:
        p = sub.add_parser(step)
        p.add_argument("--project-dir", default=None)
        p.add_argument("--plan")
        p.set_defaults(func=cmd_step, step=step)

    p = sub.add_parser("feedback")
    p.add_argument("operation", nargs="?", default="edit", choices=["edit", "show", "search", "workflow"])
    p.add_argument("--plan")
    p.add_argument("--project-dir", default=None)
    p.set_defaults(func=cmd_step, step="feedback")

    p = sub.add_parser("override")
    p.add_argument("override_action", choices=list(OVERRIDE_ACTIONS))
    p.add_argument("--plan")
    p.add_argument("--project-dir", default=None)
    p.add_argument("--reason", default="")
    p.add_argument("--note")
    p.set_defaults(func=cmd_step, step="override")

    p = sub.add_parser("resume")
    p.add_argument("--plan", required=True)
    p.add_argument("--project-dir", default=None)
    p.add_argument("--choice", default=None)
    p.set_defaults(func=cmd_step, step="resume")

    p = sub.add_parser("chain")
    chain_sub = p.add_subparsers(dest="chain_command", required=True)
    s = chain_sub.add_parser("start")
    s.add_argument("--spec", required=True)
    s.add_argument("--project-dir", required=False)
    s.add_argument("--one", action="store_true")
    s.add_argument("--no-git-refresh", action="store_true")
    s.add_argument("--no-push", action="store_true")
    s.set_defaults(func=cmd_chain_start)
    s = chain_sub.add_parser("override")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=_unsupported, command_name="chain override")

    p = sub.add_parser("user-action")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_unsupported, command_name="user-action")
    return parser


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)
