"""A sweep's member processes, both ends: `MemberProcess` (a training member as its own `snnrun train`),
`SimulateWorker` (the sweep's end of a long-lived simulate worker) and `serve` (the worker's end: it runs
`snnrun simulate` command lines one after another, so the members of a simulate sweep do not each pay an
interpreter's and torch's start-up).

`serve` lives beside the CLI (it runs command lines through it); the sweep starts it
(`python -c "from snnrun.worker import serve; serve()"`) and talks to it through pipes. Every member process is
in its own session (only the sweep passes Ctrl-C on) and, on Linux, is killed when the sweep's process dies, so
that a sweep killed outright leaves no member running on into a folder whose trial another worker will retry.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path


def _die_with_parent() -> None:
    """In a child, before exec: ask Linux for SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


_PREEXEC = _die_with_parent if sys.platform.startswith("linux") else None


class MemberProcess:
    """One member as its own `snnrun` process."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "a", encoding="utf-8") as handle:
            self.process = subprocess.Popen([sys.executable, "-m", "snnrun", *args], stdout=handle, stderr=handle,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                            preexec_fn=_PREEXEC)

    def poll(self) -> int | None:
        return self.process.poll()

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)


WORKER = "from snnrun.worker import serve; serve()"


class SimulateWorker:
    """A long-lived process running simulate members one after another (`serve`).

    The sweep writes one member's arguments and log file per line to its stdin, and reads back one exit code per
    member from its stdout. A worker that dies (killed, crashed) fails the member it held; the next member in
    its slot gets a new worker."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        with open(log, "a", encoding="utf-8") as handle:  # where an interpreter that cannot start says why
            self.process = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=handle, env=env, start_new_session=True,
                                            preexec_fn=_PREEXEC)
        self.reply = self.process.stdout.fileno()
        os.set_blocking(self.reply, False)
        self.buffer = b""
        self.alive = True

    def submit(self, args: list[str], log: Path) -> None:
        try:
            self.process.stdin.write(json.dumps({"args": args, "log": str(log)}).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:  # it has died: poll() reports its exit
            pass

    def poll(self) -> int | None:
        """The member's exit code once it has finished, else None."""
        try:
            chunk = os.read(self.reply, 4096)
        except BlockingIOError:
            return None
        self.buffer += chunk
        if b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            code = int(line)
            if code in (130, 143):  # it stops after an interrupted member
                self.alive = False
            return code
        if chunk:
            return None
        self.alive = False  # the end of its output: the worker has exited, the member with it
        code = self.process.wait()
        return code if code != 0 else 1

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)

    def close(self, interrupt: bool = False) -> None:
        """End the worker: it finishes its member (unless interrupted) and exits when its input closes."""
        if interrupt:
            self.interrupt()
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.alive = False


def wait_for_any(processes: list, timeout: float) -> None:
    """Sleep until a simulate worker has something to say, or timeout seconds (a member process is polled)."""
    pipes = [p.reply for p in processes if isinstance(p, SimulateWorker) and p.alive]
    if pipes:
        select.select(pipes, [], [], timeout)
    else:
        import time

        time.sleep(timeout)


def serve() -> None:
    """A sweep's simulate worker: run members (`snnrun simulate ...` arguments) read from stdin, one a line, each
    as the command would run in a fresh process (its output appended to the member's log, env.json's command
    line the member's own), and write each one's exit code on a line to stdout. Ends at the end of stdin, or
    with exit code 130 on Ctrl-C (SIGINT), after reporting the member it stopped."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)  # between members, stray output goes nowhere (never into the replies)
    os.dup2(quiet, 2)
    try:
        for line in sys.stdin:
            job = json.loads(line)
            code = _serve_member(job["args"], Path(job["log"]))
            reply.write(f"{code}\n")
            if code in (130, 143):
                sys.exit(code)
    except KeyboardInterrupt:
        sys.exit(130)


def _serve_member(args: list[str], log: Path) -> int:
    """Run one `snnrun simulate` command line in this process with its output in log; its exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    home = os.dup(1), os.dup(2)
    handle = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    os.close(handle)
    argv = sys.argv
    sys.argv = [str(Path(__file__).with_name("__main__.py")), *args]  # as `python -m snnrun ARGS` has it
    try:
        return _simulate_command(args)
    finally:
        sys.argv = argv
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        for fd, saved in zip((1, 2), home, strict=True):
            os.dup2(saved, fd)
            os.close(saved)


def _simulate_command(args: list[str]) -> int:
    """The `snnrun simulate` command with these arguments (those `member_command` makes), as the CLI runs it:
    its exit code (2: an error the user can fix; 130: interrupted; 1: a failure, its traceback printed)."""
    import traceback

    import typer

    try:
        from snnrun import cli  # (the first member pays the import; an import error fails that member)

        command, config, *rest = args
        if command != "simulate":
            raise ValueError(f"a sweep worker runs simulate members, not {command}")
        options: dict[str, list[str]] = {"--set": [], "--device": [], "--into": []}
        for name, value in zip(rest[::2], rest[1::2], strict=True):
            options[name].append(value)
        device = options["--device"][-1] if options["--device"] else None
        cli.simulate(config=Path(config), current=None, set_=options["--set"], out_dir=Path("outputs/simulate"),
                     into=Path(options["--into"][-1]), device=device)
        return 0
    except typer.Exit as stop:
        return stop.exit_code
    except KeyboardInterrupt:
        return 130
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # a member's failure is reported, and the worker carries on
        traceback.print_exc()
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
        return 1
