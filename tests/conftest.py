import os

import pytest
import torch

# One thread per test process: parallel workers on a 2-core machine must not stall each other.
torch.set_num_threads(int(os.environ.get("SNNRUN_TEST_THREADS", "1")))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder that holds a copy of the repository's configs/."""
    import shutil
    from pathlib import Path

    shutil.copytree(Path(__file__).resolve().parents[1] / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path
