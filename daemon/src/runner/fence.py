# megaplan-cloudd: the launch gate. Runs ON THE RUNNER in front of every chain launch (a tick's
# restart or advance, runner/mutation.rs; a manual `chain`, runner/launch.rs), after the layout
# constants, files.py and drivers.py. Under one exclusive flock on a file in the chain's
# workspace state dir it does, in this order and as ONE step:
#
#   1. fencing: compare the offered token with the one stored on the runner (compare-and-swap);
#   2. refuse when a process already drives this chain (whoever started it);
#   3. preflight: free disk and inodes in the workspace, the agents' logins, the chain spec;
#   4. store the new token and who holds it;
#   5. run the launch script (argv 2) while still holding the lock, and return its status.
#
# So two launchers (two daemons with their own databases, a manual `chain` racing a tick, a
# tick acting on an old observation) can never both pass: the second waits for the lock, then
# sees the new token or the new driver. The lock file is opened close-on-exec (Python's
# default), so the tmux server and the driver it starts never inherit it.
#
# Each verdict is one stdout line `MEGAPLAN_GATE {json}` that the daemon parses
# (runner/fence.rs); the exit status says which: 0 (accepted, then the launch's own status),
# EXIT_FENCED, EXIT_LIVE_RUNNER, EXIT_PREFLIGHT, EXIT_OTHER_CHAIN.

import base64
import fcntl
import json
import time

GATE_PREFIX = "MEGAPLAN_GATE "

# How long past its `exp` a refreshable token (one with a refresh token beside it) may be
# before the login counts as dead: the agent refreshes on use, so only a login nobody has
# refreshed for a week is one that will fail.
REFRESH_GRACE_SECS = 7 * 24 * 3600


def fence_paths(resolved_spec, workspace):
    """(token file, lock file) of a chain: in `<workspace>/.megaplan/cloud-fence/`, named after
    the spec's stem and a digest of its resolved path (one chain per spec)."""
    p = pathlib.PurePosixPath(resolved_spec)
    digest = hashlib.sha1(resolved_spec.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    folder = os.path.join(workspace, ".megaplan", "cloud-fence")
    base = os.path.join(folder, "%s-%s" % (p.stem, digest))
    return base + ".json", base + ".lock"


def read_fence(path):
    """(token, holder, at) stored on the runner; (0, None, None) when none was ever stored. An
    unreadable file raises: the gate then refuses rather than guess a token."""
    if not os.path.exists(path):
        return 0, None, None
    with open(path) as fh:
        data = json.load(fh)
    token = data.get("token")
    if not isinstance(token, int) or token < 0:
        raise ValueError("token %r is not a non-negative integer" % (token,))
    return token, data.get("holder"), data.get("at")


def write_fence(path, token, holder):
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(json.dumps({"token": token, "holder": holder,
                             "at": now.isoformat().replace("+00:00", "Z")}, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def say(verdict):
    sys.stdout.write(GATE_PREFIX + json.dumps(verdict, sort_keys=True) + "\n")
    sys.stdout.flush()


def existing_dir(path):
    """The nearest existing folder at or above `path` (the workspace may not exist yet)."""
    cur = path
    while cur and not os.path.isdir(cur):
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    return cur or "/"


def jwt_exp(token):
    """The `exp` claim of a JWT, or None when `token` is not a JWT with one."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    try:
        part = token.split(".")[1]
        part += "=" * (-len(part) % 4)
        claims = json.loads(base64.urlsafe_b64decode(part.encode("ascii")))
    except Exception:  # noqa: BLE001 - not a JWT
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return exp if isinstance(exp, (int, float)) else None


def credential_problems(path, now):
    """What is wrong with one agent login file (empty list when nothing): present files must be
    JSON; every JWT inside (Codex: `tokens.id_token`, `tokens.access_token`) must not have
    expired (beyond REFRESH_GRACE_SECS when a refresh token sits beside it); Claude's `claudeAiOauth.expiresAt` (milliseconds) likewise. Never prints a value."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as fh:
            data = json.load(fh)
    except Exception as exc:  # noqa: BLE001
        return ["%s is not readable JSON (%s)" % (path, exc.__class__.__name__)]
    problems = []

    def walk(value, where, refreshable):
        if isinstance(value, dict):
            # An agent refreshes a short-lived token itself when a refresh token sits beside it
            # (Codex's `tokens`); such a token only counts as dead once it has not been
            # refreshed for REFRESH_GRACE_SECS.
            inner = bool(value.get("refresh_token") or value.get("refreshToken"))
            for k, v in value.items():
                walk(v, where + [str(k)], inner)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, where + [str(i)], refreshable)
        else:
            exp = jwt_exp(value)
            grace = REFRESH_GRACE_SECS if refreshable else 0
            if exp is not None and exp + grace <= now:
                problems.append("%s: %s expired at %s" % (
                    path, ".".join(where),
                    datetime.datetime.fromtimestamp(exp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")))

    walk(data, [], False)
    oauth = data.get("claudeAiOauth") if isinstance(data, dict) else None
    if isinstance(oauth, dict) and isinstance(oauth.get("expiresAt"), (int, float)):
        exp = oauth["expiresAt"] / 1000.0
        if exp <= now and not oauth.get("refreshToken"):
            problems.append("%s: claudeAiOauth.expiresAt passed and no refresh token" % path)
    return problems


def preflight(req, resolved_spec):
    """The failed checks, each {check, field, detail, fix}; empty when the launch may go."""
    failed = []
    floors = req.get("floors") or {}
    where = existing_dir(req["workspace"])
    try:
        st = os.statvfs(where)
        free = st.f_bavail * st.f_frsize
        want = floors.get("disk_bytes") or 0
        if free < want:
            failed.append({
                "check": "disk", "field": "preflight.min_free_disk",
                "detail": "%d bytes free in %s, below the floor of %d" % (free, where, want),
                "fix": "free disk space on the runner's workspace volume, or lower preflight.min_free_disk in cloud.yaml",
            })
        want = floors.get("inodes") or 0
        # A file system without an inode table (f_files 0: btrfs, some overlays) has no floor.
        if st.f_files and st.f_favail < want:
            failed.append({
                "check": "inodes", "field": "preflight.min_free_inodes",
                "detail": "%d inodes free in %s, below the floor of %d" % (st.f_favail, where, want),
                "fix": "delete files on the runner's workspace volume, or lower preflight.min_free_inodes in cloud.yaml",
            })
    except OSError as exc:
        failed.append({"check": "disk", "field": "repo.workspace",
                       "detail": "cannot stat %s: %s" % (where, exc),
                       "fix": "check the runner's workspace volume"})
    now = time.time()
    home = os.path.expanduser("~")
    for rel in req.get("auth_files") or []:
        path = rel if rel.startswith("/") else os.path.join(home, rel)
        for problem in credential_problems(path, now):
            failed.append({
                "check": "agent_auth", "field": "megaplan.codex_auth",
                "detail": problem,
                "fix": "log the agent in again on your machine, then run `megaplan-cloudctl chain` (or `deploy`) to seed the new login",
            })
    if req.get("check_spec", True):
        try:
            with open(resolved_spec, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            failed.append({"check": "chain_spec", "field": "chain.spec",
                           "detail": "cannot read the chain spec %s: %s" % (resolved_spec, exc.strerror or exc),
                           "fix": "run `megaplan-cloudctl chain SPEC` to upload the chain spec again"})
    return failed


def gate_main(args):
    """argv: request JSON, launch script. See the head of this file."""
    req = json.loads(args[0])
    script = args[1] if len(args) > 1 else None
    workspace = req["workspace"]
    spec = req["spec"]
    if not os.path.isabs(spec):
        spec = os.path.join(workspace, spec)
    resolved = os.path.realpath(spec)
    token_file, lock_file = fence_paths(resolved, workspace)
    os.makedirs(os.path.dirname(token_file), exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    # Blocks until the holder's launch is over; the remote command's deadline bounds the wait.
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        try:
            held, holder, since = read_fence(token_file)
        except Exception as exc:  # noqa: BLE001
            say({"verdict": "refused", "reason": "unreadable_token", "token_file": token_file,
                 "detail": "%s: %s" % (exc.__class__.__name__, exc)})
            return EXIT_FENCED
        expected = req.get("expected")
        base = {"token_file": token_file, "held": held, "holder": holder, "since": since,
                "offered_by": req.get("holder")}
        if req.get("mode") == "cas" and expected != held:
            say(dict(base, verdict="refused", reason="stale_token", expected=expected,
                     offered=(expected or 0) + 1))
            return EXIT_FENCED
        marker = req.get("marker_file")
        if marker and marker_check_main([marker, spec]) != 0:
            say(dict(base, verdict="refused", reason="other_chain"))
            return EXIT_OTHER_CHAIN
        drivers = find_drivers(resolved, req.get("launcher") or "")
        if drivers:
            say(dict(base, verdict="refused", reason="live_driver", drivers=drivers))
            return EXIT_LIVE_RUNNER
        failed = preflight(req, resolved)
        if failed:
            say(dict(base, verdict="preflight_failed", checks=failed))
            return EXIT_PREFLIGHT
        token = max(expected or 0, held) + 1
        write_fence(token_file, token, req.get("holder"))
        say(dict(base, verdict="accepted", token=token))
        if not script:
            return 0
        proc = subprocess.run(["bash", "-c", script], stdin=subprocess.DEVNULL)
        return proc.returncode
    finally:
        os.close(fd)
