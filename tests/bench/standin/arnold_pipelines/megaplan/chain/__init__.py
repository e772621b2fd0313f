"""STAND-IN for the megaplan core's chain module (test double, offline e2e bench).

The real package (peteromallet/Arnold at 80208d744, arnold_pipelines/megaplan/chain/__init__.py)
re-exports the state API of chain/spec.py and `_capture_sync_state` of chain/git_ops.py, and
drives a chain spec (`chain start --spec P [--one]`). This stand-in does the same with a
scripted runner that does no real work: per milestone it sleeps `step_seconds` and then follows
the control file (stall / await_pr / prerequisite / fail). See tests/bench/README.md.
"""

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .git_ops import (  # noqa: F401 - re-exported like the core's chain package
    SYNC_CLEAN,
    SYNC_DIRTY,
    SYNC_STALE,
    _capture_sync_state,
    _classify_sync_state,
    _git,
)
from .spec import (  # noqa: F401
    ChainState,
    ChainStateError,
    _legacy_state_path_for,
    _runtime_policy_path_for,
    _state_path_for,
    load_chain_state,
    runtime_policy_path_for,
    save_chain_state,
    state_path_for,
)


class ChainError(Exception):
    """A chain spec problem; `code` is the error code printed in the JSON error."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- chain runner


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def load_spec(spec_path):
    path = Path(spec_path)
    if not path.exists():
        raise ChainError("invalid_spec", f"spec file not found: {spec_path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ChainError("invalid_spec", f"YAML parse error: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ChainError("invalid_spec", "chain spec must be a YAML mapping")
    milestones = data.get("milestones", [])
    if not isinstance(milestones, list):
        raise ChainError("invalid_spec", "`milestones` must be a list")
    for i, m in enumerate(milestones):
        if not isinstance(m, dict):
            raise ChainError("invalid_spec", f"milestones[{i}] must be a mapping")
        for key in ("label", "idea"):
            if not isinstance(m.get(key), str) or not m[key].strip():
                raise ChainError("invalid_spec", f"milestones[{i}].{key} is required")
    return data


def plan_dir(project, plan):
    return Path(project) / ".megaplan" / "plans" / plan


def write_plan_state(project, plan, current_state, **extra):
    d = plan_dir(project, plan)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "state.json"
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = {}
    data.update(extra)
    data.update({"name": plan, "current_state": current_state, "updated_at": _now()})
    tmp = d / "state.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def exclude_megaplan_dir(project):
    """Keep the core's own `.megaplan/` out of `git status` (local exclude, never committed)."""
    git_dir = _git(project, "rev-parse", "--git-dir")
    if git_dir is None:
        return
    exclude = (Path(project) / git_dir.strip() / "info" / "exclude").resolve()
    try:
        text = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
        if ".megaplan/" not in text.splitlines():
            exclude.parent.mkdir(parents=True, exist_ok=True)
            with exclude.open("a", encoding="utf-8") as f:
                f.write(("" if text.endswith("\n") or not text else "\n") + ".megaplan/\n")
    except OSError:
        pass


class Control:
    """The scripting control file, re-read on every access; a half-written file keeps the last good value."""

    def __init__(self, workspace):
        env = os.environ.get("MEGAPLAN_STANDIN_CONTROL")
        self.path = Path(env) if env else Path(workspace) / ".megaplan" / "standin-control.json"
        self.last = {}

    def read(self):
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        except (OSError, json.JSONDecodeError):
            return self.last
        if not isinstance(data, dict):
            data = {}
        self.last = data
        return data


def _say(msg):
    print(f"[standin-chain {_now()}] {msg}", flush=True)


def _pr_state(number):
    try:
        proc = subprocess.run(
            ["gh", "pr", "view", str(number), "--json", "state", "--jq", ".state"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return proc.stdout.strip().upper() if proc.returncode == 0 else "unknown"


def _churn(spec_path, last, workspace):
    """Load, bump `standin_writes`, save (no lock, as the core). When the loaded counter is not
    the one this driver saved last, someone else's save replaced ours: recorded in
    `.megaplan/standin-lost-writes.jsonl`."""
    state = load_chain_state(spec_path)
    seen = state.to_dict().get("standin_writes", 0)
    if last is not None and seen != last:
        with (Path(workspace) / ".megaplan" / "standin-lost-writes.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"expected": last, "found": seen, "at": _now()}) + "\n")
    state.standin_writes = (last if last is not None else seen) + 1
    save_chain_state(spec_path, state)
    return state.standin_writes


def _complete(spec_path, workspace, state, label, plan, **extra):
    write_plan_state(workspace, plan, "done")
    entry = {"label": label, "plan": plan, "status": "done"}
    entry.update(extra)
    state.completed = [*state.completed, entry]
    state.current_plan_name = None
    state.last_state = "done"
    state.pr_number = None
    state.pr_state = None
    state.current_milestone_index += 1
    save_chain_state(spec_path, state)
    _say(f"milestone {label}: done")


def _step(spec_path, workspace, milestones, control):
    """Run one milestone step. Returns 'next' to continue, or an exit code to stop with."""
    state = load_chain_state(spec_path)
    if state.current_milestone_index >= len(milestones):
        _say("chain complete")
        print("chain complete", flush=True)
        return 0
    index = max(state.current_milestone_index, 0)
    label = milestones[index]["label"]
    plan = f"plan-{label}"
    resuming = state.current_plan_name == plan and state.current_milestone_index == index

    if resuming and state.last_state == "awaiting_pr_merge" and state.pr_number is not None:
        number = state.pr_number
        pr = _pr_state(number)
        if pr != "MERGED":
            _say(f"milestone {label}: PR #{number} is {pr.lower()}; still awaiting merge")
            return 0
        state.pr_state = "merged"
        _complete(spec_path, workspace, state, label, plan, pr_number=number)
        return "next"

    state.current_milestone_index = index
    state.current_plan_name = plan
    state.last_state = "running"
    save_chain_state(spec_path, state)
    write_plan_state(workspace, plan, "running", milestone=label)
    _say(f"milestone {label}: running ({plan})")

    ctl = control.read()
    if label in (ctl.get("crash") or []):
        # A driver that dies right after each launch, as in a crash loop: no clean-up, the
        # state left saying `running`.
        _say(f"milestone {label}: crashing (control file)")
        os._exit(3)
    time.sleep(float(ctl.get("step_seconds", 0.2) or 0))
    announced = False
    writes = None
    while label in ((ctl := control.read()).get("stall") or []):
        if not announced:
            _say(f"milestone {label}: stalled by the control file")
            announced = True
        if label in (ctl.get("churn") or []):
            # A live driver saving its state file in a tight loop, as the core does between
            # steps: every save must find the state it saved last (no lost writes).
            writes = _churn(spec_path, writes, workspace)
            time.sleep(0.002)
        else:
            writes = None
            time.sleep(0.5)
    ctl = control.read()

    prerequisite = ctl.get("prerequisite") or {}
    if isinstance(prerequisite, dict) and label in prerequisite:
        state = load_chain_state(spec_path)
        state.last_state = "blocked"
        save_chain_state(spec_path, state)
        write_plan_state(workspace, plan, "blocked", blocked_reason=str(prerequisite[label]))
        _say(f"milestone {label}: blocked on a human prerequisite: {prerequisite[label]}")
        return 0
    if label in (ctl.get("fail") or []):
        state = load_chain_state(spec_path)
        state.last_state = "failed"
        save_chain_state(spec_path, state)
        write_plan_state(workspace, plan, "failed")
        _say(f"milestone {label}: failed (control file)")
        return 1
    await_pr = ctl.get("await_pr") or {}
    if isinstance(await_pr, dict) and label in await_pr:
        state = load_chain_state(spec_path)
        state.last_state = "awaiting_pr_merge"
        state.pr_number = int(await_pr[label])
        state.pr_state = "open"
        save_chain_state(spec_path, state)
        write_plan_state(workspace, plan, "awaiting_pr_merge")
        _say(f"milestone {label}: awaiting merge of PR #{state.pr_number}")
        return 0
    state = load_chain_state(spec_path)
    _complete(spec_path, workspace, state, label, plan)
    return "next"


def run_chain(spec, *, one=False, git_refresh=True):
    spec_path = Path(os.path.realpath(spec))
    workspace = spec_path.parent
    data = load_spec(spec_path)
    milestones = data.get("milestones") or []
    for m in milestones:
        idea = Path(m["idea"])
        if not idea.is_absolute():
            idea = workspace / idea
        if not idea.exists():
            raise ChainError("missing_idea_file", f"milestone {m['label']!r} idea file not found: {m['idea']}")
    (workspace / ".megaplan").mkdir(parents=True, exist_ok=True)
    exclude_megaplan_dir(workspace)
    with (workspace / ".megaplan" / "standin-chain-runs.jsonl").open("a", encoding="utf-8") as runs:
        runs.write(
            json.dumps(
                {
                    "argv": sys.argv[1:],
                    # The package this run was imported as (`arnold_pipelines.megaplan`, or
                    # `arnold.pipelines.megaplan` when a test installs it under that name).
                    "core_module": __name__.rsplit(".", 1)[0],
                    "spec": str(spec_path),
                    "one": one,
                    "git_refresh": git_refresh,
                    "pid": os.getpid(),
                    "cwd": os.getcwd(),
                    "trusted_container": os.environ.get("MEGAPLAN_TRUSTED_CONTAINER"),
                    "started_at": _now(),
                }
            )
            + "\n"
        )
    control = Control(workspace)
    while True:
        result = _step(spec_path, workspace, milestones, control)
        if result != "next":
            return result
        if one:
            return 0
