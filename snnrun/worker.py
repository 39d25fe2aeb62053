"""A sweep's simulate worker: a long-lived process that runs `snnrun simulate` command lines one after another,
so the members of a simulate sweep do not each pay an interpreter's and torch's start-up.

It lives beside the CLI (it runs command lines through it), not in the library: `snnrun.sweep` only starts it
(`python -c "from snnrun.worker import serve; serve()"`) and talks to it through pipes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path


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
