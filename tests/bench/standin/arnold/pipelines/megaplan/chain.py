"""STAND-IN for the megaplan core's chain module (test double, offline e2e bench).

Implements the documented chain-state format (path derivation, fields, atomic
save), `_capture_sync_state` and a scripted chain runner. The runner does no
real work: per milestone it sleeps `step_seconds` and then follows the control
file (stall / await_pr / prerequisite / fail). See tests/bench/README.md.
"""

import datetime
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

SYNC_CLEAN = "synced"
SYNC_STALE = "stale"
SYNC_DIRTY = "dirty"

# (field, default factory) in the core's to_dict order.
_FIELDS = (
    ("schema_version", lambda: 0),
    ("current_milestone_index", lambda: -1),
    ("current_plan_name", lambda: None),
    ("last_state", lambda: None),
    ("pr_number", lambda: None),
    ("pr_state", lambda: None),
    ("completed", list),
    ("branch_head", lambda: None),
    ("pr_head", lambda: None),
    ("last_pushed_commit", lambda: None),
    ("dirty_flag", lambda: False),
    ("sync_state", lambda: None),
    ("extra_repos", list),
    ("chain_session", lambda: None),
    ("resolved_workspace", lambda: None),
    ("extra_repo_sync", list),
    ("completion_contract_mode", lambda: "shadow"),
    ("retry_counts", dict),
    ("ladder_stage", dict),
    ("profile_bumps", dict),
    ("robustness_bumps", dict),
    ("depth_bumps", dict),
    ("enforce_revise_counts", dict),
)
_FIELD_NAMES = tuple(name for name, _ in _FIELDS)


class ChainStateError(Exception):
    """A chain state file that cannot be used (code invalid_chain_state)."""

    code = "invalid_chain_state"


class ChainError(Exception):
    """A chain spec problem; `code` is the error code printed in the JSON error."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class ChainState:
    """Chain state with attribute access; unknown fields are carried through untouched."""

    def __init__(self, **values):
        object.__setattr__(self, "_extra", {})
        for name, default in _FIELDS:
            object.__setattr__(self, name, default())
        for key, value in values.items():
            setattr(self, key, value)

    def __setattr__(self, key, value):
        if key in _FIELD_NAMES:
            object.__setattr__(self, key, value)
        else:
            self._extra[key] = value

    def __getattr__(self, key):
        extra = object.__getattribute__(self, "_extra")
        if key in extra:
            return extra[key]
        raise AttributeError(key)

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise ChainStateError("chain_state.json must be an object")
        state = cls(**data)
        if state.pr_number is not None:
            try:
                state.pr_number = int(state.pr_number)
            except (TypeError, ValueError):
                state.pr_number = None
        repos = state.extra_repos
        if not isinstance(repos, list) or not all(isinstance(r, str) and r for r in repos):
            state.extra_repos = []
        for name in ("chain_session", "resolved_workspace"):
            value = getattr(state, name)
            if not isinstance(value, str) or not value.strip():
                setattr(state, name, None)
        if not isinstance(state.extra_repo_sync, list):
            state.extra_repo_sync = []
        if not isinstance(state.completed, list):
            state.completed = []
        return state

    def to_dict(self):
        out = {name: getattr(self, name) for name in _FIELD_NAMES}
        for key, value in self._extra.items():
            out[key] = value
        return out


def _resolved(spec_path):
    return Path(os.path.realpath(str(spec_path)))


def _digest(resolved):
    return hashlib.sha1(str(resolved).encode("utf-8")).hexdigest()[:12]


def state_path_for(spec_path):
    """`<dir of realpath(spec)>/.megaplan/plans/.chains/<stem>-<sha1(realpath)[:12]>.json`."""
    resolved = _resolved(spec_path)
    return resolved.parent / ".megaplan" / "plans" / ".chains" / f"{resolved.stem}-{_digest(resolved)}.json"


def runtime_policy_path_for(spec_path):
    resolved = _resolved(spec_path)
    return (
        resolved.parent
        / ".megaplan"
        / "plans"
        / ".chains"
        / f"{resolved.stem}-{_digest(resolved)}.runtime_policy.json"
    )


def _legacy_state_path(spec_path):
    return _resolved(spec_path).parent / "chain_state.json"


def load_chain_state(spec_path):
    path = state_path_for(spec_path)
    if not path.exists():
        path = _legacy_state_path(spec_path)
        if not path.exists():
            return ChainState()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ChainStateError(f"chain_state.json is invalid JSON: {exc}") from exc
    return ChainState.from_dict(data)


def save_chain_state(spec_path, state):
    path = state_path_for(spec_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _git(root, *args):
    """stdout of `git <args>` in root, or None when git fails (never raises)."""
    try:
        proc = subprocess.run(
            ["git", *args], cwd=str(root), capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout


def _classify_sync_state(*, dirty, branch_head, pr_head, last_pushed_commit):
    if dirty:
        return SYNC_DIRTY
    if branch_head and last_pushed_commit and branch_head != last_pushed_commit:
        return SYNC_DIRTY
    if pr_head and last_pushed_commit and pr_head != last_pushed_commit:
        return SYNC_STALE
    if branch_head and pr_head and branch_head != pr_head:
        return SYNC_STALE
    return SYNC_CLEAN


def _head(root):
    out = _git(root, "rev-parse", "HEAD")
    return out.strip() or None if out is not None else None


def _dirty(root):
    out = _git(root, "status", "--porcelain")
    return bool(out.strip()) if out is not None else False


def _capture_sync_state(root, spec_path, *, branch=None, pr_number=None, extra_repos=None):
    """Probe git (read-only, no network beyond `ls-remote origin`) and record sync fields."""
    del pr_number  # accepted, unused (as in the core)
    state = load_chain_state(spec_path)
    head = _head(root)
    state.branch_head = head
    if branch:
        out = _git(root, "ls-remote", "--heads", "origin", branch)
        first = out.splitlines()[0].split() if out and out.strip() else []
        state.pr_head = first[0] if first else None
    state.dirty_flag = _dirty(root)
    state.last_pushed_commit = head
    state.sync_state = _classify_sync_state(
        dirty=state.dirty_flag,
        branch_head=state.branch_head,
        pr_head=state.pr_head,
        last_pushed_commit=state.last_pushed_commit,
    )
    if extra_repos:
        entries = []
        for repo in extra_repos:
            try:
                if not Path(repo).exists():
                    entries.append({"path": repo, "status": "missing"})
                    continue
                repo_head = _head(repo)
                if repo_head is None:
                    entries.append({"path": repo, "status": "not_a_git_repo"})
                    continue
                dirty = _dirty(repo)
                entries.append(
                    {
                        "path": repo,
                        "branch_head": repo_head,
                        "dirty": dirty,
                        "sync_state": _classify_sync_state(
                            dirty=dirty, branch_head=repo_head, pr_head=None, last_pushed_commit=repo_head
                        ),
                    }
                )
            except Exception:  # noqa: BLE001 - the core records probe errors per repo
                entries.append({"path": repo, "status": "error"})
        state.extra_repo_sync = entries
    save_chain_state(spec_path, state)


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
    time.sleep(float(ctl.get("step_seconds", 0.2) or 0))
    announced = False
    while label in (control.read().get("stall") or []):
        if not announced:
            _say(f"milestone {label}: stalled by the control file")
            announced = True
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
