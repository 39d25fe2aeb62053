import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# One thread per test process: parallel workers on a 2-core machine must not stall each other.
torch.set_num_threads(int(os.environ.get("SNNRUN_TEST_THREADS", "1")))

# No test may depend on the machine's speed: no per-example deadline, and no failing because drawing examples
# was slow on a loaded machine (tests that set their own suppress_health_check list add too_slow themselves).
settings.register_profile("snnrun", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("snnrun")

HOLD_DIR = Path(__file__).resolve().parent / "hold"
HANG_GUARD_S = 900  # only against a hang: a process that is on its way never fails for being slow


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder that holds a copy of the repository's configs/."""
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[1] / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


class Hold:
    """Stop an snnrun process (or one it starts: a sweep member, a torchrun rank) at a known point and wait
    there until the test signals or kills it, instead of racing it: see tests/hold/sitecustomize.py.

        proc = subprocess.Popen(..., env=hold.env("checkpoint:1", ENV))
        hold.wait(proc)  # now held just after its first last.pt; send SIGINT, or SIGKILL
    """

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def env(self, point: str, base: dict[str, str]) -> dict[str, str]:
        """base with the hold at `point` switched on for every process started with it."""
        path = os.pathsep.join(p for p in (str(HOLD_DIR), base.get("PYTHONPATH", "")) if p)
        return {**base, "PYTHONPATH": path, "SNNRUN_TEST_HOLD": point, "SNNRUN_TEST_HOLD_MARKER": str(self.marker)}

    def wait(self, proc: subprocess.Popen) -> None:
        """Return once a process is held at the point; fail if proc ends first (the point was never reached)."""
        give_up = time.monotonic() + HANG_GUARD_S
        while not self.marker.exists():
            if proc.poll() is not None:
                _, stderr = proc.communicate()
                pytest.fail(f"the process ended (exit {proc.returncode}) without reaching the hold point:\n"
                            f"{(stderr or '')[-3000:]}")
            if time.monotonic() > give_up:
                proc.kill()
                pytest.fail(f"the process was not held within {HANG_GUARD_S} s: it hangs")
            time.sleep(0.05)


@pytest.fixture
def hold(tmp_path) -> Hold:
    return Hold(tmp_path / "held")
