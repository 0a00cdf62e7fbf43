"""tlgates chooses its own torch thread count where it trains (tlgates.cpu)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import torch

from tlgates import cpu
from tlgates.backbones import tiny_resnet
from tlgates.experiment import run_method
from tlgates.source import SourceConfig, SourceModel
from tlgates.train import TrainConfig


@pytest.fixture(autouse=True)
def _fresh_choice(monkeypatch):
    monkeypatch.setattr(cpu, "_last_choice", None)
    monkeypatch.delenv("TLGATES_THREADS", raising=False)


@pytest.mark.parametrize("cores, busy, expected", [
    (2, 0.0, 2), (2, 0.15, 2), (2, 0.3, 1), (2, 1.0, 1), (2, 2.0, 1), (1, 0.0, 1),
    (16, 0.0, cpu.MAX_THREADS), (16, 13.5, 2),
])
def test_as_many_threads_as_idle_cores(monkeypatch, cores, busy, expected):
    monkeypatch.setattr(cpu, "cores", lambda: cores)
    monkeypatch.setattr(cpu, "busy_elsewhere", lambda seconds=0: busy)
    assert cpu.choose_threads() == expected


def test_the_environment_decides_when_set(monkeypatch):
    monkeypatch.setenv("TLGATES_THREADS", "3")
    assert cpu.choose_threads() == 3
    monkeypatch.setenv("TLGATES_THREADS", "0")
    with pytest.raises(ValueError, match="TLGATES_THREADS must be an integer ≥ 1, got '0'"):
        cpu.choose_threads()


def test_a_choice_is_reused_for_a_while(monkeypatch):
    looks = []
    monkeypatch.setattr(cpu, "busy_elsewhere", lambda seconds=0: looks.append(1) or 0.0)
    first = cpu.choose_threads()
    assert cpu.choose_threads() == first and len(looks) == 1
    monkeypatch.setattr(cpu, "_last_choice", (time.monotonic() - cpu.REUSE_SECONDS, first))
    cpu.choose_threads()
    assert len(looks) == 2


def test_a_busy_process_is_seen():
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert cpu.busy_elsewhere(0.5) > 0.5
    finally:
        competitor.kill()
        competitor.wait()


def test_our_own_work_is_not_counted():
    """A thread of this process that keeps a core busy while we look is not "elsewhere"
    (compared with a look just before, so that other load on the machine cancels out)."""
    stop = threading.Event()

    def spin() -> None:
        x = torch.randn(256, 256)
        while not stop.is_set():
            x @ x

    before = cpu.busy_elsewhere(0.3)
    worker = threading.Thread(target=spin)
    with cpu.threads(1):
        worker.start()
        try:
            during = cpu.busy_elsewhere(0.3)
        finally:
            stop.set()
            worker.join()
    assert during - before < 0.5, (before, during)


def test_threads_sets_the_count_and_restores_it():
    before = torch.get_num_threads()
    with cpu.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be an integer ≥ 1, got 0"):
        with cpu.threads(0):
            pass


def test_the_launchers_thread_count_does_not_change_a_result(monkeypatch):
    """Trained under torch's count of 2 or of 1 (what the launcher set), the run uses tlgates'
    choice, records it, and gives the same numbers."""
    torch.manual_seed(0)
    source = SourceModel(tiny_resnet(width=8).eval(), SourceConfig(), 0.0, 0.0)
    monkeypatch.setenv("TLGATES_THREADS", "1")
    results = []
    before = torch.get_num_threads()
    for launcher in (2, 1):
        torch.set_num_threads(launcher)
        results.append(run_method("finetune", seeds=[0], config=TrainConfig(epochs=2),
                                  source=source, progress=False))
        assert torch.get_num_threads() == launcher  # restored after training
    torch.set_num_threads(before)
    assert results[0].accuracies == results[1].accuracies
    assert results[0].threads == results[1].threads == 1
    assert [h.rows[-1]["loss"] for h in results[0].histories] == \
        [h.rows[-1]["loss"] for h in results[1].histories]
