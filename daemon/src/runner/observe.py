# megaplan-cloudd chain observation: runs ON THE RUNNER, once per status/tick, and gathers every
# fact the daemon needs in one round trip. It is read-only except for the core's own sync-state
# refresh (when asked). It never raises: every failure becomes a field of the observation.
#
# Input: one JSON object with spec, session, workspace, launcher, log_path, sync_refresh,
# pr_probe, marker_dir. Runs under the launcher's interpreter (python 3.8+). An empty launcher
# means "find the core": the first of CORE_MODULES this python can import, reported as `core`
# for the daemon to remember.
#
# The core is imported INTO this interpreter, once (`Core`), for the sync refresh and the plan
# status: importing the real core costs about two seconds, so a tick must not start it twice,
# and the resident observer (resident.py) must not start it at all in steady state. A launcher
# without `-m <module>` (a console script) or with environment assignments runs `status` as a
# child process instead.
#
# Two ways to run it (runner/observe.rs): one-shot, `main(argv)` prints one line
#     MEGAPLAN_OBSERVATION <json>
# last on stdout (login-shell noise before it is skipped by the daemon); or resident, see
# resident.py. The daemon sends the layout constants (runner/layout.rs), files.py, drivers.py
# and this file first, as one script.

import contextlib
import datetime
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time

VERSION = 1
MAX_FILE_BYTES = 4 * 1024 * 1024
REASON_CHARS = 600
SIDECAR_SUFFIXES = (
    ".repair-progress.json",
    ".reap-progress.json",
    ".chain-health.progress.json",
    ".progress.json",
    ".liveness-lease.json",
)
TMUX_GONE = (
    "can't find session",
    "session not found",
    "no server running",
    "no sessions",
    "no such file or directory",
)

def find_core(python):
    """{"module", "launcher"} of the first importable core module, or {"error"}. find_spec of a
    submodule imports only its parent packages, never the (slow) core itself."""
    import importlib.util

    for name in CORE_MODULES:
        try:
            if importlib.util.find_spec(name) is not None:
                return {"module": name, "launcher": "%s -m %s" % (python or "python3", name)}
        except Exception:  # noqa: BLE001 - a broken parent package counts as absent
            continue
    return {
        "module": None,
        "launcher": None,
        "error": "the megaplan core is not installed on the runner: neither `%s` nor `%s` is importable; "
        "install it or set megaplan.launcher in cloud.yaml" % CORE_MODULES,
    }


def tail(text, limit=REASON_CHARS):
    text = (text or "").strip()
    if len(text) > limit:
        text = "..." + text[-limit:]
    return text


def explain(proc):
    """The refusal's own words: stderr, else stdout (a CLI may print its error there)."""
    return tail(proc.stderr) or tail(proc.stdout) or "no output"


def split_launcher(launcher):
    """(env assignments, argv, -m module or None) of the launcher setting."""
    try:
        words = shlex.split(launcher or "")
    except ValueError:
        words = (launcher or "").split()
    env = {}
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    module = None
    if "-m" in words:
        at = words.index("-m")
        if at + 1 < len(words):
            module = words[at + 1]
    return env, words, module


def run(argv, cwd=None, timeout=60, env_extra=None):
    """subprocess.run that reports instead of raising: (proc or None, error text or None)."""
    env = None
    if env_extra:
        env = dict(os.environ)
        env.update(env_extra)
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd or None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            errors="replace",
            timeout=timeout,
            env=env,
        )
        return proc, None
    except (FileNotFoundError, NotADirectoryError):
        if cwd and not os.path.isdir(cwd):
            return None, "working directory %s does not exist on the runner" % cwd
        return None, "%s is not installed on the runner" % argv[0]
    except subprocess.TimeoutExpired:
        return None, "%s timed out after %ss" % (argv[0], timeout)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a field
        return None, "%s failed: %s: %s" % (argv[0], type(exc).__name__, exc)


def read_text(path):
    """(text or None, error or None); a missing file is (None, None)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except Exception as exc:  # noqa: BLE001
        return None, "cannot read %s: %s" % (path, exc)
    if len(data) > MAX_FILE_BYTES:
        return None, "%s is larger than %d bytes" % (path, MAX_FILE_BYTES)
    return data.decode("utf-8", "replace"), None


def read_json_object(path):
    text, err = read_text(path)
    if text is None:
        return None, err
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, "%s is not valid JSON: %s" % (path, exc)
    if not isinstance(value, dict):
        return None, "%s is not a JSON object" % path
    return value, None


def parse_state(text):
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def pr_number_of(state):
    value = state.get("pr_number")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


class Core:
    """The megaplan core imported into this interpreter: imported at most once per process
    (`starts` counts the imports), and `fingerprint` of its installed files taken at import,
    so a resident observer can tell when an upgrade changed them (`changed`)."""

    def __init__(self):
        self.module = None
        self.starts = 0
        self.files = None

    def get(self, module, part):
        """The core's submodule `part` (e.g. `chain`, `cli`), importing the core if needed."""
        if self.module is not None and self.module != module:
            raise RuntimeError(
                "this observer imported %s; %s needs a fresh interpreter" % (self.module, module)
            )
        if self.module is None:
            self.module = module
            self.starts += 1
            importlib.import_module(module)
            self.files = core_files(module)
        return importlib.import_module(module + "." + part)

    def changed(self):
        """Why the imported core is no longer what is installed, or None."""
        if self.module is None:
            return None
        now = core_files(self.module)
        if now != self.files:
            return "the core's installed files changed (%s)" % self.module
        return None


def core_files(module):
    """(path, mtime_ns, size) of every file of the core's top-level package as found on sys.path
    now (not as imported), plus its packaging metadata (dist-info, egg-info, editable finders,
    .pth files named after it): what `pip install --upgrade` rewrites."""
    import importlib.machinery

    top = module.split(".")[0]
    importlib.invalidate_caches()
    found = []
    spec = importlib.machinery.PathFinder.find_spec(top, sys.path)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                found.append((path, st.st_mtime_ns, st.st_size))
    stem = top.split("_")[0].lower()
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            low = name.lower()
            if low.startswith(stem) or low.startswith("__editable__"):
                if low.endswith((".dist-info", ".egg-info", ".pth", ".egg-link")) or low.startswith("__editable__"):
                    path = os.path.join(entry, name)
                    for sub in [path] + ([os.path.join(path, n) for n in sorted(os.listdir(path))] if os.path.isdir(path) else []):
                        try:
                            st = os.stat(sub)
                        except OSError:
                            continue
                        found.append((sub, st.st_mtime_ns, st.st_size))
    return tuple(found)


def in_process(launcher):
    """The `-m` module of a launcher the observer can run in its own interpreter (no
    environment assignments), else None."""
    env, _, module = split_launcher(launcher)
    return None if env else module


def core_call(fn):
    """Run fn() with the core's prints captured: (value, printed text, error text or None)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            value = fn()
        return value, out.getvalue(), None
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code, out.getvalue(), None if code == 0 else tail(err.getvalue()) or "exit %d" % code
    except Exception as exc:  # noqa: BLE001
        return None, out.getvalue(), "%s: %s" % (type(exc).__name__, tail(str(exc)))


def sync_refresh(core, module, workspace, spec, session, state, no_core=None):
    """The core's `_capture_sync_state`, then record where and in which session the chain runs
    (as the original cloud CLI did), in this interpreter."""
    if not module:
        return {
            "status": "failed",
            "reason": no_core
            or "the launcher has no `-m <module>`, so the core's chain module cannot be imported",
        }
    extra = state.get("extra_repos")
    if not (isinstance(extra, list) and extra and all(isinstance(x, str) and x for x in extra)):
        extra = None

    def refresh():
        from pathlib import Path

        chain = core.get(module, "chain")
        chain._capture_sync_state(
            Path(workspace), Path(spec), branch=None, pr_number=pr_number_of(state), extra_repos=extra
        )
        loaded = chain.load_chain_state(Path(spec))
        loaded.resolved_workspace = workspace
        loaded.chain_session = session
        chain.save_chain_state(Path(spec), loaded)

    _, _, err = core_call(refresh)
    if err:
        return {"status": "failed", "reason": err}
    return {"status": "ok"}


def first_json_object(text):
    """The whole output as JSON, else the last line that is a JSON object."""
    text = (text or "").strip()
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def status_word(obj):
    # The core names it `state`; older fixtures say `status` (behavior.md section 8).
    for key in ("state", "status", "current_state"):
        value = obj.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def plan_status(core, launcher, workspace, plan, no_core=None):
    if not plan:
        return {"status": "missing", "reason": "no current plan"}
    env, argv, _ = split_launcher(launcher)
    module = in_process(launcher)
    reason = no_core or "the launcher setting is empty"
    if module:
        cli = lambda: core.get(module, "cli").main(["status", "--plan", plan])  # noqa: E731
        code, printed, err = core_call(cli)
        obj = first_json_object(printed)
        word = status_word(obj) if obj is not None else None
        if err is None and code in (0, None) and word:
            out = {"status": word, "plan": plan, "source": "megaplan status"}
            if isinstance(obj.get("next_step"), str):
                out["next_step"] = obj["next_step"]
            return out
        if err is not None:
            reason = "megaplan status failed: %s" % (tail(printed) or err)
        elif code not in (0, None):
            reason = "megaplan status exited %s: %s" % (code, tail(printed) or "no output")
        else:
            reason = "megaplan status printed no JSON object with a state: %s" % (tail(printed) or "no output")
    elif argv:
        proc, err = run(argv + ["status", "--plan", plan], cwd=workspace, timeout=60, env_extra=env)
        if err:
            reason = err
        else:
            obj = first_json_object(proc.stdout)
            word = status_word(obj) if obj is not None else None
            if proc.returncode == 0 and word:
                out = {"status": word, "plan": plan, "source": "megaplan status"}
                if isinstance(obj.get("next_step"), str):
                    out["next_step"] = obj["next_step"]
                return out
            if proc.returncode != 0:
                reason = "megaplan status exited %d: %s" % (proc.returncode, explain(proc))
            else:
                reason = "megaplan status printed no JSON object with a state: %s" % explain(proc)
    # Fall back to the plan's own state file, which the core keeps current.
    state_file = os.path.join(workspace or ".", ".megaplan", "plans", plan, "state.json")
    obj, _ = read_json_object(state_file)
    if obj is not None and status_word(obj):
        return {"status": status_word(obj), "plan": plan, "source": "state_file", "reason": reason}
    return {"status": "unavailable", "plan": plan, "reason": reason}


def runner_probe(session, drivers=None):
    out = {"session": session}
    if drivers:
        first = drivers[0]
        out.update(status="alive", pid=first["pid"], source="process")
        out["session"] = first["session"]
        out["target_session"] = session
        return out
    if not session:
        out.update(status="unknown", reason="no session name")
        return out
    proc, err = run(["tmux", "has-session", "-t", "=" + session], timeout=15)
    if err:
        out.update(status="unknown", reason=err)
    elif proc.returncode == 0:
        out["status"] = "alive"
    else:
        said = (proc.stderr or "").strip()
        if not said or any(s in said.lower() for s in TMUX_GONE):
            out["status"] = "dead"
            if said:
                out["detail"] = tail(said, 200)
        else:
            out.update(status="unknown", reason="tmux has-session failed: " + tail(said, 200))
    return out


def log_stat(workspace, log_path):
    path = log_path if os.path.isabs(log_path) else os.path.join(workspace or ".", log_path)
    out = {"path": path, "exists": False, "mtime": None, "size": None}
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return out
    except Exception as exc:  # noqa: BLE001
        out["error"] = "cannot stat %s: %s" % (path, exc)
        return out
    out["exists"] = True
    out["size"] = st.st_size
    out["tail"] = log_tail(path, st.st_size)
    out["mtime"] = (
        datetime.datetime.fromtimestamp(st.st_mtime, tz=datetime.timezone.utc)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )
    return out


# The chain log's last lines a tick keeps (the dashboard's chain page shows them): bounded by
# lines, by bytes read and by line length, so a log without line breaks costs no more.
LOG_TAIL_LINES = 12
LOG_TAIL_BYTES = 8192
LOG_TAIL_LINE_CHARS = 300


def log_tail(path, size):
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            data = fh.read(LOG_TAIL_BYTES)
    except Exception:  # noqa: BLE001 - the tail is a convenience; the stat already said it exists
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if size > LOG_TAIL_BYTES and lines:
        lines = lines[1:]  # the first one is cut
    return [l[:LOG_TAIL_LINE_CHARS] for l in lines[-LOG_TAIL_LINES:]]


def safe_session_name(name):
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


def marker_of(marker_dir, session):
    if not safe_session_name(session):
        return None, "session name %r cannot name a marker file" % session
    return read_json_object(os.path.join(marker_dir, session + ".json"))


def lease_path(marker_dir, session):
    # Beside the session marker; the resident observer's watch refreshes it (resident.py).
    return os.path.join(marker_dir, session + ".lease.json")


def lease_evidence(marker_dir, session, workspace, resolved, marker):
    """The driver's lease as the liveness verdict reads it (chain/liveness.rs): its age and
    TTL on the runner's clock, and `mismatch` when it is bound to another chain (workspace,
    spec, session, or the identity digest of the session marker). None when there is none."""
    if not safe_session_name(session):
        return None
    obj, _ = read_json_object(lease_path(marker_dir, session))
    if obj is None:
        return None
    digest = (marker or {}).get("identity_digest") or ""
    mismatch = None
    for field, want in (("session", session), ("workspace", workspace), ("spec", resolved), ("identity_digest", digest)):
        if (obj.get(field) or "") != want:
            mismatch = "the lease names %s %r, not %r" % (field, obj.get(field), want)
            break
    try:
        age = max(0.0, time.time() - float(obj.get("refreshed_at")))
        ttl = float(obj.get("ttl_secs"))
    except (TypeError, ValueError):
        return {"mismatch": "the lease file is malformed"}
    return {"age_secs": round(age, 3), "ttl_secs": ttl, "mismatch": mismatch, "pids": obj.get("pids")}


def list_sessions(marker_dir):
    """(sessions, error): live megaplan-chain* tmux sessions plus marker-only (dead) ones."""
    sessions = []
    error = None
    live = []
    proc, err = run(["tmux", "ls", "-F", "#{session_name}"], timeout=15)
    if err:
        error = err
    elif proc.returncode == 0:
        live = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    elif not any(s in (proc.stderr or "").lower() for s in TMUX_GONE):
        error = "tmux ls failed: " + tail(proc.stderr, 200)
    live = [name for name in live if name.startswith(CHAIN_SESSION)]
    for name in sorted(live):
        marker, merr = marker_of(marker_dir, name)
        entry = {"session": name, "alive": True, "marker": marker}
        if merr:
            entry["marker_error"] = merr
        sessions.append(entry)
    try:
        names = sorted(os.listdir(marker_dir))
    except FileNotFoundError:
        names = []
    except Exception as exc:  # noqa: BLE001
        names = []
        error = error or "cannot list %s: %s" % (marker_dir, exc)
    for fname in names:
        if not fname.endswith(".json") or fname.endswith(SIDECAR_SUFFIXES):
            continue
        name = fname[: -len(".json")]
        if not name.startswith(CHAIN_SESSION) or name in live:
            continue
        marker, merr = marker_of(marker_dir, name)
        entry = {"session": name, "alive": False, "marker": marker}
        if merr:
            entry["marker_error"] = merr
        sessions.append(entry)
    return sessions, error


def pr_probe(workspace, number):
    proc, err = run(
        ["gh", "pr", "view", str(number), "--json", "state", "--jq", ".state"],
        cwd=workspace,
        timeout=60,
    )
    if err:
        return "unknown", err
    if proc.returncode != 0:
        return "unknown", "gh pr view exited %d: %s" % (proc.returncode, explain(proc))
    word = (proc.stdout or "").strip().lower()
    return (word or "unknown"), (None if word else "gh pr view printed nothing")


def observe(req, python=None, core=None):
    core = core or Core()
    out = {"version": VERSION, "errors": []}
    spec = req.get("spec") or ""
    session = req.get("session") or ""
    workspace = req.get("workspace") or ""
    launcher = req.get("launcher") or ""
    no_core = None
    if not launcher:
        out["core"] = find_core(python)
        launcher = out["core"].get("launcher") or ""
        no_core = out["core"].get("error")
    log_path = req.get("log_path") or DEFAULT_CHAIN_LOG
    marker_dir = req.get("marker_dir") or SESSION_MARKER_DIR
    out["spec_path"] = spec
    out["session"] = session
    out["workspace"] = workspace

    if workspace:
        try:
            os.chdir(workspace)
        except Exception as exc:  # noqa: BLE001
            out["errors"].append("cannot enter workspace %s: %s" % (workspace, exc))

    state = {}
    if spec:
        if not os.path.isabs(spec):
            spec = os.path.join(workspace or os.getcwd(), spec)
        resolved = os.path.realpath(spec)
        state_path, policy_path, legacy_path = state_paths(resolved)
        out["resolved_spec"] = resolved
        out["policy_path"] = policy_path
        out["spec_text"], out["spec_error"] = read_text(resolved)

        def read_state():
            path = state_path
            if not os.path.exists(state_path) and os.path.exists(legacy_path):
                path = legacy_path
            text, err = read_text(path)
            return path, text, err

        path, text, err = read_state()
        state = parse_state(text)
        drivers = find_drivers(resolved, launcher, run)
        out["drivers"] = drivers
        if req.get("sync_refresh"):
            if out["spec_text"] is None:
                out["sync_refresh"] = {"status": "skipped", "reason": "remote spec %s not found" % resolved}
            elif drivers:
                # The core's _capture_sync_state loads, changes and saves the state file with no
                # lock (chain/git_ops.py, chain/spec.py), and a live driver saves it too: a save
                # between our load and save would be lost. A tick never acts on a live runner,
                # so the refresh is only needed when no driver is alive.
                out["sync_refresh"] = {
                    "status": "skipped",
                    "reason": "a chain driver is alive (pid %d); the core takes no lock on the state file"
                    % drivers[0]["pid"],
                }
            else:
                out["sync_refresh"] = sync_refresh(
                    core, in_process(launcher), workspace, spec, session, state, no_core
                )
            # Re-observe: everything below reads the refreshed state.
            path, text, err = read_state()
            state = parse_state(text)
        out["state_path"] = path
        out["state_text"], out["state_error"] = text, err
        out["policy_text"], out["policy_error"] = read_text(policy_path)
    else:
        out.update(resolved_spec="", state_path="", policy_path="", spec_text=None, state_text=None)
        drivers = []

    plan = state.get("current_plan_name")
    plan = plan.strip() if isinstance(plan, str) else ""
    out["plan_status"] = plan_status(core, launcher, workspace, plan, no_core) if spec else {
        "status": "missing",
        "reason": "no chain spec",
    }
    out["runner"] = runner_probe(session, drivers)
    out["logs"] = log_stat(workspace, log_path)
    out["session_marker"], out["session_marker_error"] = (
        marker_of(marker_dir, session) if session else (None, None)
    )
    if session:
        out["runner"]["lease"] = lease_evidence(
            marker_dir, session, workspace, out.get("resolved_spec") or "", out["session_marker"]
        )
    out["sessions"], out["sessions_error"] = list_sessions(marker_dir)

    number = pr_number_of(state)
    if req.get("pr_probe") and state.get("last_state") == "awaiting_pr_merge":
        if number is None:
            out["pr_probe"], out["pr_probe_error"] = "unknown", "chain state has no pr_number"
        else:
            out["pr_probe"], out["pr_probe_error"] = pr_probe(workspace, number)
    return out


def main(argv):
    """One-shot: argv[1] the request (JSON), argv[2] the interpreter's name as the shell found
    it. Prints the observation line; the core, when needed, is imported once."""
    core = Core()
    try:
        req = json.loads(argv[1]) if len(argv) > 1 else None
        if not isinstance(req, dict):
            out = {"version": VERSION, "fatal": "observation input must be one JSON object argument"}
        else:
            out = observe(req, argv[2] if len(argv) > 2 else None, core)
    except Exception as exc:  # noqa: BLE001 - report, never raise
        out = {"version": VERSION, "fatal": "observation failed: %s: %s" % (type(exc).__name__, exc)}
    out["core_starts"] = core.starts
    sys.stdout.write("\n" + OBSERVATION_PREFIX + json.dumps(out, ensure_ascii=True, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0
