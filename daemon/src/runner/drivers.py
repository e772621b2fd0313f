# megaplan-cloudd: which processes on this runner drive a chain. Runs ON THE RUNNER, inside the
# observation (observe.py follows it), and alone, with the check at the end, as the last look
# before a start (the mutation script, runner/mutation.rs, and the chain preflight,
# runner/launch.rs). The layout constants (CORE_MODULES, EXIT_LIVE_RUNNER) come first, from
# runner/layout.rs.
#
# A chain is driven by any process running the core's `chain start --spec S` (or `chain --spec
# S`, the core's default action) for the same spec, resolved on this machine: whatever tmux
# session started it (`megaplan-chain`, the entrypoint's `agent`, an operator's own) or none.

import os
import shlex
import subprocess
import sys

def _plain_run(argv, timeout=15):
    """(proc or None, error or None), never raising."""
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            errors="replace",
            timeout=timeout,
        )
        return proc, None
    except Exception as exc:  # noqa: BLE001
        return None, str(exc)


def core_names(launcher):
    """(module names, console-script names) a core command line may start with."""
    try:
        words = shlex.split(launcher or "")
    except ValueError:
        words = (launcher or "").split()
    while words and "=" in words[0] and not words[0].startswith("="):
        words.pop(0)
    modules = set(CORE_MODULES)
    scripts = {"megaplan", "arnold"}
    if "-m" in words and words.index("-m") + 1 < len(words):
        modules.add(words[words.index("-m") + 1])
    elif words:
        scripts.add(os.path.basename(words[0]))
    return modules, scripts


def chain_start_spec(argv, names):
    """The `--spec` of a core chain-driving command line, else None. The core must be named:
    `-m <core module>` before `chain`, or a core console script right before it."""
    try:
        at = argv.index("chain")
    except ValueError:
        return None
    if at == 0:
        return None
    modules, scripts = names
    head = argv[:at]
    named = any(head[i] == "-m" and head[i + 1] in modules for i in range(len(head) - 1))
    named = named or os.path.basename(head[-1]) in scripts
    rest = argv[at + 1 :]
    if not named or not rest or not (rest[0] == "start" or rest[0].startswith("--")):
        return None
    for i, word in enumerate(rest):
        if word == "--spec" and i + 1 < len(rest):
            return rest[i + 1]
        if word.startswith("--spec="):
            return word[len("--spec=") :]
    return None


def parent_of(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
        return int(stat.rsplit(")", 1)[1].split()[1])
    except Exception:  # noqa: BLE001
        return 0


def pane_sessions(run=_plain_run):
    """{pane pid: tmux session} of every pane of the tmux server, {} without one."""
    proc, err = run(["tmux", "list-panes", "-a", "-F", "#{pane_pid} #{session_name}"], timeout=15)
    panes = {}
    if err or proc is None or proc.returncode != 0:
        return panes
    for line in proc.stdout.splitlines():
        pid, _, name = line.strip().partition(" ")
        if pid.isdigit() and name:
            panes[int(pid)] = name
    return panes


def find_drivers(resolved_spec, launcher, run=_plain_run):
    """[{"pid", "session"}] of the processes driving the chain of `resolved_spec`, lowest pid
    first; `session` is the tmux session whose pane the process descends from, or None. /proc
    is read directly: no `ps` needed."""
    if not resolved_spec or not os.path.isdir("/proc"):
        return []
    names = core_names(launcher)
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                raw = fh.read(65536)
        except Exception:  # noqa: BLE001 - gone, or not ours to read
            continue
        argv = [w.decode("utf-8", "surrogateescape") for w in raw.split(b"\0") if w]
        spec = chain_start_spec(argv, names)
        if spec is None:
            continue
        if not os.path.isabs(spec):
            try:
                spec = os.path.join(os.readlink("/proc/%d/cwd" % pid), spec)
            except Exception:  # noqa: BLE001
                continue
        if os.path.realpath(spec) == resolved_spec:
            found.append(pid)
    if not found:
        return []
    panes = pane_sessions(run)
    pids = set(found)
    drivers = []
    for pid in sorted(found):
        if parent_of(pid) in pids:
            continue  # a driver's own child (a re-exec) is the same driver
        session, cur, hops = None, pid, 0
        while cur > 1 and hops < 64:
            if cur in panes:
                session = panes[cur]
                break
            cur, hops = parent_of(cur), hops + 1
        drivers.append({"pid": pid, "session": session})
    return drivers


def check_main(args):
    """argv: spec, workspace, launcher. Exit EXIT_LIVE_RUNNER (and say why) when a driver of the spec lives;
    also when that cannot be told, so a second runner is never started by mistake."""
    try:
        spec, workspace, launcher = args[0], args[1], args[2]
        if not os.path.isabs(spec):
            spec = os.path.join(workspace, spec)
        drivers = find_drivers(os.path.realpath(spec), launcher)
    except Exception as exc:  # noqa: BLE001
        sys.stderr.write("megaplan-supervisor: cannot check for a live chain runner: %s\n" % exc)
        return EXIT_LIVE_RUNNER
    for d in drivers:
        sys.stderr.write(
            "megaplan-supervisor: a chain runner for this spec is alive (pid %d, tmux session %s); "
            "refusing to start a second one\n" % (d["pid"], d["session"] or "none")
        )
    return EXIT_LIVE_RUNNER if drivers else 0


def wait_main(args):
    """argv: spec, workspace, launcher, tmux session. After a start: return as soon as the new
    runner's driver process is visible, or its session is gone (a `--one` tick may finish that
    fast), polling every 20 ms for at most 3 s instead of sleeping a fixed time. Always 0: the
    caller reports what it then sees."""
    import time

    spec, workspace, launcher, session = args[0], args[1], args[2], args[3]
    if not os.path.isabs(spec):
        spec = os.path.join(workspace, spec)
    resolved = os.path.realpath(spec)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        try:
            if find_drivers(resolved, launcher):
                return 0
        except Exception:  # noqa: BLE001
            return 0
        proc, _ = _plain_run(["tmux", "has-session", "-t", "=" + session], timeout=5)
        if proc is None or proc.returncode != 0:
            return 0
        time.sleep(0.02)
    return 0
