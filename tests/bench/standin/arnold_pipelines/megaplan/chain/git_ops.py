"""STAND-IN for the megaplan core's git probing (test double, offline e2e bench).

Modeled on peteromallet/Arnold at 80208d744, arnold_pipelines/megaplan/chain/git_ops.py:
`_classify_sync_state` and `_capture_sync_state(root, spec_path, *, branch=None,
pr_number=None, extra_repos=None)`, which loads the chain state, sets branch_head, pr_head,
dirty_flag, last_pushed_commit (= live HEAD), sync_state and extra_repo_sync, and saves it:
an unlocked load-modify-save of the same file a live chain driver writes.
"""

import subprocess
from pathlib import Path

from .spec import load_chain_state, save_chain_state

SYNC_CLEAN = "synced"
SYNC_STALE = "stale"
SYNC_DIRTY = "dirty"

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
