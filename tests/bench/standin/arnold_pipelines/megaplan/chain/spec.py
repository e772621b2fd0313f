"""STAND-IN for the megaplan core's chain state format (test double, offline e2e bench).

Modeled on the real core, peteromallet/Arnold at 80208d744,
arnold_pipelines/megaplan/chain/spec.py: `_state_path_for` (the spec resolved, then
`<dir>/.megaplan/plans/.chains/<stem>-<sha1(str(resolved))[:12]>.json`),
`_legacy_state_path_for` (`chain_state.json` beside the spec, read only when the new file is
absent), `_runtime_policy_path_for`, `load_chain_state` (missing file = default state; invalid
JSON = `invalid_chain_state`) and `save_chain_state` (`.tmp` sibling + replace, `indent=2`).
The real core takes no lock around load/save; neither does this stand-in.
"""

import hashlib
import json
import os
from pathlib import Path

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


def _state_path_for(spec_path):
    """`<dir of realpath(spec)>/.megaplan/plans/.chains/<stem>-<sha1(realpath)[:12]>.json`."""
    resolved = _resolved(spec_path)
    return resolved.parent / ".megaplan" / "plans" / ".chains" / f"{resolved.stem}-{_digest(resolved)}.json"


def _runtime_policy_path_for(spec_path):
    resolved = _resolved(spec_path)
    return (
        resolved.parent
        / ".megaplan"
        / "plans"
        / ".chains"
        / f"{resolved.stem}-{_digest(resolved)}.runtime_policy.json"
    )


def _legacy_state_path_for(spec_path):
    return _resolved(spec_path).parent / "chain_state.json"


def load_chain_state(spec_path):
    path = _state_path_for(spec_path)
    if not path.exists():
        path = _legacy_state_path_for(spec_path)
        if not path.exists():
            return ChainState()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ChainStateError(f"chain_state.json is invalid JSON: {exc}") from exc
    return ChainState.from_dict(data)


def save_chain_state(spec_path, state):
    path = _state_path_for(spec_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# Public spellings kept for tests and the benchmark.
state_path_for = _state_path_for
runtime_policy_path_for = _runtime_policy_path_for
