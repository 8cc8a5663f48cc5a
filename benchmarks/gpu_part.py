"""Run one part of benchmarks/gpu_check.sh under a time limit and report it as one JSON line.

    python3 benchmarks/gpu_part.py NAME CAP_S --deadline EPOCH_S --jsonl FILE --log FILE -- COMMAND...

The command runs in a process group of its own (torch.compile's worker processes included), with
a limit of min(CAP_S, seconds left to --deadline); past it the group gets SIGTERM, then SIGKILL
(and whatever of the group outlives a normal exit is stopped too).
Its output goes to --log. Printed (and appended to --jsonl):

    {"part": NAME, "ok": ..., "rc": ..., "timed_out": ..., "wall_s": ..., "result": <the last JSON
     object line the command printed, or null>, "error_tail": <its last lines, when not ok>}

ok = exit status 0 and a JSON result (whose own "ok" or "pass", when it has one, is true). A
part that finds no time left is not started ("skipped"). Exits 0 when ok, else 1, so the
caller can go on to the next part and count failures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

MIN_START_S = 10.0  # a part the budget leaves less than this could only fail: skip it instead
GRACE_S = 5.0  # between SIGTERM and SIGKILL


def last_json(lines: list[str]) -> dict | None:
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group, SIGKILL what is left after GRACE_S."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is gone: nothing left to stop
            return
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            continue


def run_part(name: str, command: list[str], limit: float, log_path: Path) -> dict:
    t0 = time.monotonic()
    timed_out = False
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== {name}: {' '.join(command)} (limit {limit:.0f} s)\n")
        log.flush()
        # A process group of its own, in this session: killpg reaches its workers, and whoever
        # ends this session (the device machine's tool) still ends them all.
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", preexec_fn=os.setpgrp)
        lines: list[str] = []

        # A reader thread keeps the pipe drained while the main thread watches the clock.
        def pump() -> None:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                log.write(line)
                log.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
        # Also after a normal exit: workers it left behind (torch.compile's pool) go with it.
        stop_group(proc)
        reader.join(timeout=GRACE_S)
        log.write(f"===== {name}: rc {proc.returncode}{' (timed out)' if timed_out else ''}, {time.monotonic() - t0:.1f} s\n")
    result = last_json(lines)
    own_ok = True if result is None else bool(result.get("ok", result.get("pass", True)))
    rec = {
        "part": name,
        "ok": proc.returncode == 0 and not timed_out and result is not None and own_ok,
        "rc": proc.returncode,
        "timed_out": timed_out,
        "limit_s": round(limit, 1),
        "wall_s": round(time.monotonic() - t0, 1),
        "result": result,
    }
    if not rec["ok"]:
        rec["error_tail"] = [line[-300:] for line in lines[-8:] if not line.startswith("{")]
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("cap_s", type=float)
    p.add_argument("--deadline", type=float, default=None, help="epoch seconds by which the whole check must end")
    p.add_argument("--jsonl", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        p.error("give the command after --")
    split = argv.index("--")
    args, command = p.parse_args(argv[:split]), argv[split + 1 :]
    left = float("inf") if args.deadline is None else args.deadline - time.time()
    if left < MIN_START_S:
        rec = {"part": args.name, "ok": False, "skipped": f"only {max(0.0, left):.0f} s of the budget left", "result": None}
    else:
        rec = run_part(args.name, command, min(args.cap_s, left), args.log)
    line = json.dumps(rec)
    with open(args.jsonl, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    print(line, flush=True)
    return 0 if rec["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
