"""The CPU tlgates trains on: what kind it is, and how many torch threads to use on it.

:func:`kind` names the CPU: with the thread count, it decides how CPU training rounds (results
made on another kind differ in the last bits, and then in the accuracies).

The thread count is tlgates' own choice, not the launcher's (:func:`choose_threads`).

Whoever starts Python decides torch's default thread count: ``scripts/lab.sh`` sets one thread,
a plain JupyterLab, VS Code or a cloud notebook gives one per core. Training results depend on
the count (sums are split differently), and so does speed, in both directions: on the idle
2-core development machine two threads trained fine-tuning about 1.4× faster than one, while
with another process busy on one of the cores two threads were several times *slower* (each
waits for the other at every operation; ``benchmarks/bench_threads.py`` measures both in one
run). So the choice is made where tlgates trains (:func:`~tlgates.experiment.run_method`, the
source models), from what the machine has free at that moment:

* ``$TLGATES_THREADS`` if set (an integer ≥ 1): the user's choice, used as it is;
* under torchrun, torch's own count (torchrun gives every process one thread);
* otherwise as many threads as there are idle cores, at least one and at most
  :data:`MAX_THREADS`: a core counts as idle when other processes used less than
  :data:`BUSY_SHARE` of it while we looked (:data:`LOOK_SECONDS`; our own process excluded).

The count is recorded with every result (``RunResult.threads``) and is part of the run cache's
key. On one machine and load the choice is the same whoever launched Python, so are the numbers.
"""
from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import torch

from tlgates import distributed

MAX_THREADS = 4  # the tiny models gain little from more; measured up to 2 cores only
BUSY_SHARE = 0.2  # a core that others keep busier than this is left to them
LOOK_SECONDS = 0.1  # how long the load is sampled
REUSE_SECONDS = 3.0  # a choice is reused this long (compare() starts runs back to back)

_last_choice: tuple[float, int] | None = None


def kind() -> str:
    """The CPU's model name and the vector instructions torch uses on it, e.g. ``"AMD EPYC,
    AVX2"``: what decides how CPU training rounds, besides the thread count."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}"


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_elsewhere(seconds: float = LOOK_SECONDS) -> float:
    """How many cores other processes kept busy during the next ``seconds`` (0 … cores).

    Busy is everything but idle and I/O wait; on Linux the guest times are already part of
    user and nice time, so they are not added again."""
    own = psutil.Process()

    def sample() -> tuple[float, float, float]:
        total = psutil.cpu_times()
        mine = own.cpu_times()
        not_busy = total.idle + getattr(total, "iowait", 0.0)
        counted_twice = getattr(total, "guest", 0.0) + getattr(total, "guest_nice", 0.0)
        return (time.perf_counter(), sum(total) - not_busy - counted_twice,
                mine.user + mine.system)

    wall0, busy0, own0 = sample()
    time.sleep(seconds)
    wall1, busy1, own1 = sample()
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)


def choose_threads() -> int:
    """The thread count tlgates trains with now (see the module docstring)."""
    global _last_choice
    requested = os.environ.get("TLGATES_THREADS")
    if requested:
        if not requested.isdigit() or int(requested) < 1:
            raise ValueError(f"TLGATES_THREADS must be an integer ≥ 1, got {requested!r}")
        return int(requested)
    if distributed.launched():
        return torch.get_num_threads()
    now = time.monotonic()
    if _last_choice is not None and now - _last_choice[0] < REUSE_SECONDS:
        return _last_choice[1]
    free = cores() - busy_elsewhere()
    count = max(1, min(cores(), MAX_THREADS, int(free + BUSY_SHARE)))
    _last_choice = (now, count)
    return count


@contextlib.contextmanager
def threads(count: int) -> Iterator[int]:
    """Run the block with ``count`` torch threads, then restore the count it had."""
    if not (isinstance(count, int) and count >= 1):
        raise ValueError(f"threads must be an integer ≥ 1, got {count!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)
