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
# {"id": N, "stale": <why>} after which it exits: the core's installed files changed since it
# was imported (a `pip install --upgrade`), so stale code must not answer; the daemon starts a
# fresh observer and asks again. A request still running at its deadline ends the process
# (exit 124); so does end of input, at once even while a request runs: a reader thread owns
# stdin, so a hung request cannot keep the observer alive after the daemon (its only client) went
# away. Stray output of the core or its children cannot reach the protocol: it owns a private
# copy of stdout, and fd 1 is pointed at stderr.
#
# Sent after the layout constants, files.py, drivers.py and observe.py, as one script.

import queue
import threading


def serve(python):
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    home = os.getcwd()
    core = Core()

    def reply(obj):
        proto.write(json.dumps(obj, ensure_ascii=True, sort_keys=True) + "\n")
        proto.flush()

    lines = queue.Queue()
    state = {"busy": False, "eof": False}
    lock = threading.Lock()

    def read_stdin():
        # The one reader of stdin. End of input means the daemon (or its session) is gone: with
        # a request in progress nothing will read its answer, so end now, not at its deadline.
        while True:
            try:
                line = sys.stdin.readline()
            except (OSError, ValueError):
                line = ""
            if not line:
                with lock:
                    state["eof"] = True
                    if state["busy"]:
                        os._exit(0)
                lines.put(None)
                return
            lines.put(line)

    reader = threading.Thread(target=read_stdin, name="stdin-reader")
    reader.daemon = True
    reader.start()

    reply({"ready": True, "pid": os.getpid(), "version": VERSION})
    while True:
        with lock:
            state["busy"] = False
        line = lines.get()
        if line is None:
            return 0
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
        with lock:
            if state["eof"]:
                return 0
            state["busy"] = True
        why = core.changed()
        if why:
            reply({"id": rid, "stale": why})
            return 0
        deadline = req.get("deadline_secs")
        timer = None
        if isinstance(deadline, (int, float)) and deadline > 0:
            timer = threading.Timer(float(deadline), lambda: os._exit(124))
            timer.daemon = True
            timer.start()
        before = core.starts
        try:
            if req.get("op") == "ping":
                result = {"version": VERSION}
            elif req.get("op") == "observe" and isinstance(req.get("request"), dict):
                result = observe(req["request"], python, core)
            else:
                result = {"version": VERSION, "fatal": "unknown request op %r" % req.get("op")}
        except Exception as exc:  # noqa: BLE001 - report, never raise
            result = {"version": VERSION, "fatal": "observation failed: %s: %s" % (type(exc).__name__, exc)}
        finally:
            if timer is not None:
                timer.cancel()
            try:
                os.chdir(home)
            except OSError:
                pass
        result["core_starts"] = core.starts - before
        reply({"id": rid, "observation": result})
