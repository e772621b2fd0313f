# megaplan-cloudd: the chain's files on the runner: where the core keeps a spec's chain state,
# and the session markers every launch writes. Runs ON THE RUNNER, after the layout constants
# (runner/layout.rs), as part of the observation (observe.py) and of the launch scripts
# (runner/launch.rs, runner/mutation.rs), each of which ends with one of the `*_main` calls.

import datetime
import hashlib
import json
import os
import pathlib
import sys


def state_paths(resolved_spec):
    """The core's chain-state and runtime-policy paths for a spec resolved on this machine, and
    the legacy chain_state.json (the core's chain/spec.py `_state_path_for`)."""
    p = pathlib.PurePosixPath(resolved_spec)
    digest = hashlib.sha1(resolved_spec.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    chains = p.parent / ".megaplan" / "plans" / ".chains"
    return (
        str(chains / ("%s-%s.json" % (p.stem, digest))),
        str(chains / ("%s-%s.runtime_policy.json" % (p.stem, digest))),
        str(p.parent / "chain_state.json"),
    )


def marker_check_main(args):
    """argv: marker file, spec. 0 when the marker is absent or names this spec (both paths
    resolved here), else EXIT_OTHER_CHAIN."""
    path, spec = args[0], args[1]
    if not os.path.exists(path):
        return 0
    try:
        with open(path) as fh:
            named = json.load(fh).get("remote_spec")
    except Exception as exc:  # noqa: BLE001
        sys.stderr.write("megaplan-supervisor: unreadable session marker %s: %s\n" % (path, exc))
        return EXIT_OTHER_CHAIN
    if isinstance(named, str) and (named == spec or os.path.realpath(named) == os.path.realpath(spec)):
        return 0
    sys.stderr.write("megaplan-supervisor: session marker %s names %r, not %r\n" % (path, named, spec))
    return EXIT_OTHER_CHAIN


def marker_write_main(args):
    """argv: marker file, session, workspace, spec, identity digest ('' = none), run kind,
    trigger. Writes the marker atomically with sorted keys."""
    path, session, workspace, spec, digest, kind, trigger = args[:7]
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    marker = {
        "session": session,
        "workspace": workspace,
        "remote_spec": spec,
        "identity_digest": digest or None,
        "run_kind": kind,
        "trigger": trigger,
        "started_at": now.isoformat().replace("+00:00", "Z"),
    }
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(json.dumps(marker, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return 0


def marker_digest_main(args):
    """argv: marker file. Prints the marker's identity digest, or an empty line."""
    try:
        with open(args[0]) as fh:
            print(json.load(fh).get("identity_digest") or "")
    except Exception:  # noqa: BLE001
        print("")
    return 0


def remove_state_main(args):
    """argv: spec. Removes the spec's chain state (and the legacy chain_state.json), printing
    each removed path: `chain --fresh`."""
    state, _, legacy = state_paths(os.path.realpath(args[0]))
    for path in (state, legacy):
        if os.path.exists(path):
            os.remove(path)
            print("removed " + path)
    return 0
