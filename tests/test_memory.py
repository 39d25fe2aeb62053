"""snnrun.memory: freed batch-sized blocks are reused instead of page-faulted in again."""

import os
import subprocess
import sys

import pytest

from snnrun.memory import _glibc, user_chose_allocator

PROBE = """
import resource, sys, torch
from snnrun.memory import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else False)
faults = []
for _ in range(12):  # allocate, fill and free a 64 MiB tensor, as a training step does with its activations
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(1 << 24)
    small = torch.ones(1000)  # something allocated after it, as autograd's bookkeeping is
    del t
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(max(faults[-4:]))
"""


def probe(mode: str, **env) -> tuple[bool, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env=environ).stdout.split()
    return out[0] == "True", int(out[1])


def test_user_choices_are_respected():
    assert not user_chose_allocator({"PATH": "/bin"})
    assert user_chose_allocator({"LD_PRELOAD": "/usr/lib/libjemalloc.so"})
    assert user_chose_allocator({"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert user_chose_allocator({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert not user_chose_allocator({"LD_PRELOAD": ""})


@pytest.mark.skipif(not _glibc(), reason="glibc's malloc only")
def test_freed_blocks_are_reused_without_page_faults():
    took, faults = probe("keep")
    assert took
    assert faults < 100  # 64 MiB is 16,384 pages: the block comes back from the heap, already mapped
    took, faults = probe("default")
    assert not took
    assert faults > 10_000  # glibc's default: a fresh mmap, every page faulted in again
    took, faults = probe("keep", MALLOC_ARENA_MAX="2")  # the user's own malloc settings win
    assert not took
    assert faults > 10_000
