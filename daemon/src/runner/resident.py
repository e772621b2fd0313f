# megaplan-cloudd resident observer: ONE long-lived process per runner, started by the daemon
# over the session it already holds (`docker exec -i <container> bash -lc ...` through the ssh
# ControlMaster, or `docker compose exec -T` for local; provider/resident.rs). It imports the
# megaplan core once (observe.py `Core`) and then answers observation requests without starting
# the core again, so a steady-state tick costs no core start-up.
#
# Protocol: JSON lines. On start it prints {"ready": true, "pid", "version"}. Each request is
#     {"id": N, "op": "observe", "request": {<observe.py input>}, "deadline_secs": S}
# (or {"op": "ping"}); each answer is {"id": N, "observation": {...}} with `core_starts` the
# number of core imports this request caused (0 in steady state, 1 after a restart), or
# {"id": N, "deadline": S} when the request was still running at its deadline (it was killed;
# the observer goes on serving), or {"id": N, "stale": <why>} after which it exits: the core's
# installed files changed since it was imported (a `pip install --upgrade`), so stale code must
# not answer; the daemon starts a fresh observer and asks again.
#
# A watch ({"id": N, "op": "watch", "request": {spec, session, workspace, launcher},
# "poll_secs": S}) looks at the chain on the runner every S seconds with no core and no
# subprocess in steady state (the driver processes by /proc, the chain state file by stat) and
# answers {"id": N, "event": {"what": ..., "before": ..., "after": ...}} each time that changes;
# nothing while nothing changes. {"id": M, "op": "unwatch", "watch": N} ends it. While the chain
# state says `awaiting_pr_merge`, the watch also runs `gh pr view` every `pr_poll_secs` and
# sends an event once the pull request is merged; and while a driver runs, it stats the chain
# log and sends one event when the log has not grown for `stall_after_secs` (a stall).
#
# Requests run concurrently, each in a child forked from this process (it inherits the imported
# core, so steady state still costs no import) in a process group of its own: one request that
# hangs (a chain spec that is a FIFO, a stuck file system) never holds back the other
# registrations observing the same runner, and at its deadline its whole group is killed. At
# most MAX_IN_FLIGHT requests run at once. End of input ends the observer and every request
# still running, at once: a reader thread owns stdin, so nothing outlives the daemon (its only
# client). Stray output of the core or its children cannot reach the protocol: it owns a private
# copy of stdout, and fd 1 is pointed at stderr.
#
# Sent after the layout constants, files.py, drivers.py and observe.py, as one script.

import queue
import select
import signal
import threading
import time
import warnings

# Requests running at once in one observer; the daemon's own caps (tick slots per host) keep
# far fewer in flight, so this only bounds a misbehaving client.
MAX_IN_FLIGHT = 32

# Watches in one observer (one per registration observing the runner).
MAX_WATCHES = 256

# The driver lease's time to live when the watch request names none, and how often the watch
# refreshes it while it sees the driver (a fraction of the TTL, at most this).
DEFAULT_LEASE_TTL_SECS = 15.0

# How often a watch asks whether the awaited pull request was merged, when the request names
# no period (cloud.yaml `supervise.pr_poll`).
DEFAULT_PR_POLL_SECS = 60.0
LEASE_REFRESH_SECS = 2.0


def die_with_parent(parent):
    # Linux: a request's process is killed when the observer dies, however it dies (even by
    # SIGKILL, when it cannot kill its requests itself). Best effort elsewhere.
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(0)  # the observer died before the request could ask to die with it
    except Exception:  # noqa: BLE001 - no prctl here; end of input still ends requests
        pass


def watch_fingerprint(req, known_drivers):
    """What the watch compares between polls: the chain's driver pids (the known ones checked
    by /proc, a full /proc scan only while none is known) and the chain state file's stat."""
    spec = req.get("spec") or ""
    workspace = req.get("workspace") or ""
    if spec and not os.path.isabs(spec):
        spec = os.path.join(workspace or "/", spec)
    resolved = os.path.realpath(spec) if spec else ""
    alive = [p for p in known_drivers if running(p)]
    if not alive and resolved:
        alive = [d["pid"] for d in find_drivers_pids(resolved, req.get("launcher") or "")]
    state = None
    if resolved:
        state_path, _, legacy_path = state_paths(resolved)
        for path in (state_path, legacy_path):
            try:
                st = os.stat(path)
                state = (path, st.st_mtime_ns, st.st_size)
                break
            except OSError:
                continue
    return {"drivers": sorted(alive), "state": state}


def awaited_pr(state):
    """The pull request the chain waits on, from the state file the fingerprint stat'ed (its
    path first): its number while the state says `awaiting_pr_merge`, else None."""
    if not state:
        return None
    obj, _ = read_json_object(state[0])
    if not obj or obj.get("last_state") != "awaiting_pr_merge":
        return None
    return pr_number_of(obj)


def quiet_log_mtime(req, drivers):
    """The chain log's mtime when a driver runs and the log has not grown for the request's
    `stall_after_secs` (a stall, told once per mtime); None otherwise. One stat, no subprocess."""
    quiet_for = req.get("stall_after_secs")
    if not drivers or not isinstance(quiet_for, (int, float)) or quiet_for <= 0:
        return None
    log = req.get("log_path") or ""
    if not log:
        return None
    if not os.path.isabs(log):
        log = os.path.join(req.get("workspace") or "/", log)
    try:
        mtime = os.stat(log).st_mtime
    except OSError:
        return None
    return mtime if time.time() - mtime >= quiet_for else None


def running(pid):
    """A process that has not ended: a zombie (dead, not yet reaped, as under a container whose
    pid 1 reaps nothing) counts as ended."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] not in ("Z", "X")


def find_drivers_pids(resolved, launcher):
    # The /proc scan of find_drivers without the tmux pane lookup (no subprocess).
    return find_drivers(resolved, launcher, run=lambda *a, **k: (None, "no tmux lookup in a watch"))


def refresh_lease(req, pids):
    """Write the driver's lease (observe.py `lease_path`): bound to the chain's identity (the
    workspace, the spec as resolved here, the session and the identity digest its session
    marker names), refreshed by the watch while it sees a driver, with a TTL. Atomic (rename),
    so a reader never sees half a lease. The liveness verdict calls a driver dead only once
    its lease expired."""
    session = req.get("session") or ""
    if not safe_session_name(session):
        return
    spec = req.get("spec") or ""
    workspace = req.get("workspace") or ""
    if spec and not os.path.isabs(spec):
        spec = os.path.join(workspace or "/", spec)
    marker_dir = req.get("marker_dir") or SESSION_MARKER_DIR
    marker, _ = marker_of(marker_dir, session)
    ttl = req.get("lease_ttl_secs")
    if not isinstance(ttl, (int, float)) or not 1 <= ttl <= 3600:
        ttl = DEFAULT_LEASE_TTL_SECS
    lease = {
        "session": session,
        "workspace": workspace,
        "spec": os.path.realpath(spec) if spec else "",
        "identity_digest": (marker or {}).get("identity_digest") or "",
        "pids": pids,
        "refreshed_at": time.time(),
        "ttl_secs": ttl,
    }
    path = lease_path(marker_dir, session)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        os.makedirs(marker_dir, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(lease, fh, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # no lease: the verdict then rests on the process evidence alone


def watch_change(before, after):
    if before["drivers"] and not after["drivers"]:
        return "the chain's driver process is gone"
    if after["drivers"] and not before["drivers"]:
        return "a chain driver process started"
    if before["drivers"] != after["drivers"]:
        return "the chain's driver process changed"
    return "the chain state file changed"


def serve(python):
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    core = Core()
    out_lock = threading.Lock()
    kids_lock = threading.Lock()
    children = {}
    lines = queue.Queue()

    def reply(obj):
        with out_lock:
            proto.write(json.dumps(obj, ensure_ascii=True, sort_keys=True) + "\n")
            proto.flush()

    def in_flight():
        with kids_lock:
            return len(children)

    def end(code):
        # Nothing a request started outlives the observer; each is reaped here too, since an
        # orphan would go to the container's pid 1, which may reap nothing (a zombie for ever).
        with kids_lock:
            pids = list(children)
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        give_up = time.monotonic() + 5
        for pid in pids:
            while time.monotonic() < give_up:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except OSError:
                    break
                if done:
                    break
                time.sleep(0.01)
        os._exit(code)

    def read_stdin():
        # The one reader of stdin. End of input means the daemon (or its session) is gone:
        # nothing will read another answer, so end now, requests and all.
        while True:
            try:
                line = sys.stdin.readline()
            except (OSError, ValueError):
                line = ""
            if not line:
                end(0)
            lines.put(line)

    def collect(pid, rid, fd, deadline):
        # Read the child's answer until it closes its end or the deadline passes.
        chunks = []
        end_at = time.monotonic() + deadline if deadline else None
        timed_out = False
        while True:
            wait = None if end_at is None else end_at - time.monotonic()
            if wait is not None and wait <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                timed_out = True
                break
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(fd)
        if timed_out:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
        with kids_lock:
            children.pop(pid, None)
        if timed_out:
            reply({"id": rid, "deadline": deadline})
            return
        try:
            result = json.loads(b"".join(chunks).decode("utf-8"))
            if not isinstance(result, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            result = {"version": VERSION, "fatal": "the observation process ended without an answer"}
        module = result.pop("core_module", None)
        if isinstance(module, str) and core.module is None:
            # The request found the core itself: import it here too (before the answer goes
            # out, so the next request is forked with it).
            lines.put({"import": module})
        reply({"id": rid, "observation": result})

    def fork_request(rid, req, deadline):
        request = req["request"]
        before = core.starts
        module = in_process(request.get("launcher") or "")
        if module and core.module is None:
            # Import the core here, once, so every child inherits it.
            try:
                core.get(module, "cli")
            except Exception:  # noqa: BLE001 - the child reports it with its observation
                pass
        r, w = os.pipe()
        parent = os.getpid()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, 0)
                die_with_parent(parent)
                os.close(r)
                try:
                    result = observe(request, python, core)
                except Exception as exc:  # noqa: BLE001 - report, never raise
                    result = {"version": VERSION, "fatal": "observation failed: %s: %s" % (type(exc).__name__, exc)}
                result["core_starts"] = core.starts - before
                result["core_module"] = core.module
                data = json.dumps(result, ensure_ascii=True, sort_keys=True).encode("utf-8")
                view = memoryview(data)
                while view:
                    view = view[os.write(w, view):]
            finally:
                os._exit(0)
        os.close(w)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        with kids_lock:
            children[pid] = rid
        t = threading.Thread(target=collect, args=(pid, rid, r, deadline), name="request-%s" % rid)
        t.daemon = True
        t.start()

    watches = {}

    def start_watch(wid, req):
        poll = req.get("poll_secs")
        if not isinstance(poll, (int, float)) or not 0.05 <= poll <= 3600:
            poll = 1.0
        if len(watches) >= MAX_WATCHES:
            raise RuntimeError("the observer already runs %d watches" % MAX_WATCHES)
        stop = threading.Event()

        def loop():
            # The first look is taken at once, so a change right after the watch began is seen.
            last = watch_fingerprint(req["request"], [])
            ttl = req["request"].get("lease_ttl_secs")
            every = min(LEASE_REFRESH_SECS, ttl / 3.0) if isinstance(ttl, (int, float)) and ttl > 0 else LEASE_REFRESH_SECS
            leased = 0.0
            # While the chain waits on a pull request, GitHub is asked every `pr_poll_secs`
            # (and only then): a merge is no runner event, but it is what the chain waits for.
            # The tick that saw the wait probed it already, so the first ask is one period on.
            pr_every = req["request"].get("pr_poll_secs")
            if not isinstance(pr_every, (int, float)) or pr_every < 1:
                pr_every = DEFAULT_PR_POLL_SECS
            awaited = awaited_pr(last["state"])
            asked = time.monotonic()
            told_merged = None
            told_stall = None
            while True:
                if last["drivers"] and time.monotonic() - leased >= every:
                    refresh_lease(req["request"], last["drivers"])
                    leased = time.monotonic()
                if stop.wait(poll):
                    break
                try:
                    now = watch_fingerprint(req["request"], last["drivers"])
                except Exception as exc:  # noqa: BLE001 - a watch never ends the observer
                    now = {"drivers": [], "state": None, "error": "%s: %s" % (type(exc).__name__, exc)}
                if now != last:
                    if now["drivers"] != last["drivers"]:
                        leased = 0.0  # a new driver: its lease at once
                    reply({"id": wid, "event": {"what": watch_change(last, now), "drivers": now["drivers"]}})
                if now["state"] != last["state"]:
                    awaited = awaited_pr(now["state"])
                    asked = time.monotonic()
                elif awaited is not None and awaited != told_merged and time.monotonic() - asked >= pr_every:
                    asked = time.monotonic()
                    word, _ = pr_probe(req["request"].get("workspace") or "/", awaited)
                    if word == "merged":
                        told_merged = awaited
                        reply({"id": wid, "event": {"what": "pull request #%d was merged" % awaited, "drivers": now["drivers"]}})
                # The log's growth is no event (a running chain writes all the time); its stop
                # is: once the log is quiet for `stall_after_secs` with a driver running, the
                # watch says so once (the tick that follows reports the stall).
                try:
                    quiet = quiet_log_mtime(req["request"], now["drivers"])
                except Exception:  # noqa: BLE001 - a watch never ends the observer
                    quiet = None
                if quiet is not None and quiet != told_stall:
                    told_stall = quiet
                    reply({"id": wid, "event": {"what": "the chain log stopped growing", "drivers": now["drivers"]}})
                last = now

        t = threading.Thread(target=loop, name="watch-%s" % wid)
        t.daemon = True
        watches[wid] = stop
        t.start()

    reader = threading.Thread(target=read_stdin, name="stdin-reader")
    reader.daemon = True
    reader.start()

    reply({"ready": True, "pid": os.getpid(), "version": VERSION})
    while True:
        line = lines.get()
        if isinstance(line, dict):
            try:
                core.get(line["import"], "cli")
            except Exception:  # noqa: BLE001 - the next child imports it itself
                pass
            continue
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            reply({"id": None, "observation": {"version": VERSION, "fatal": "bad request: %s" % exc}})
            continue
        rid = req.get("id")
        why = core.changed()
        if why:
            reply({"id": rid, "stale": why})
            end(0)
        deadline = req.get("deadline_secs")
        if not isinstance(deadline, (int, float)) or deadline <= 0:
            deadline = None
        if req.get("op") == "watch" and isinstance(req.get("request"), dict):
            try:
                start_watch(rid, req)
                reply({"id": rid, "watching": True})
            except Exception as exc:  # noqa: BLE001 - report, never raise
                reply({"id": rid, "watching": False, "error": "%s: %s" % (type(exc).__name__, exc)})
        elif req.get("op") == "unwatch":
            stop = watches.pop(req.get("watch"), None)
            if stop is not None:
                stop.set()
            reply({"id": rid, "unwatched": stop is not None})
        elif req.get("op") == "ping":
            reply({"id": rid, "observation": {"version": VERSION, "core_starts": 0}})
        elif req.get("op") != "observe" or not isinstance(req.get("request"), dict):
            reply({"id": rid, "observation": {"version": VERSION, "fatal": "unknown request op %r" % req.get("op")}})
        elif in_flight() >= MAX_IN_FLIGHT:
            reply({"id": rid, "observation": {"version": VERSION, "fatal": "the observer already runs %d requests" % MAX_IN_FLIGHT}})
        else:
            fork_request(rid, req, deadline)
