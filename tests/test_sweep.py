"""Tests of the sweep: rows written as they finish, resumed without duplicates after a kill,
the same rows whatever the interruptions and the number of jobs, bad arguments named, and the
shipped results file reproduced by re-running some of its rows."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tlgates import cpu, sweep
from tlgates.__main__ import main
from tlgates.methods import METHODS

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "results" / "sweep.jsonl"
# A small grid: 2 methods × 2 shots × 2 seeds = 8 runs of one epoch each.
GRID = ["--methods", "finetune,linear", "--targets", "digits", "--shots", "1,2", "--seeds", "2",
        "--epochs", "1", "--quiet"]


def sweep_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tlgates", "sweep", *GRID, "--out", str(out), *extra]


def results(path: Path) -> list[dict]:
    """The result rows of a file without their timings (which differ from run to run)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in rows if row["kind"] == "result"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "whole.jsonl"
    assert main(["sweep", *GRID, "--out", str(out)]) == 0
    return out


def test_a_sweep_writes_one_row_per_setting_in_canonical_order(uninterrupted: Path) -> None:
    rows = results(uninterrupted)
    keys = [tuple(row[k] for k in sweep.KEY) for row in rows]
    assert keys == sorted(keys) and len(set(keys)) == len(keys) == 8
    assert {row["method"] for row in rows} == {"finetune", "linear"}
    assert all(0 <= row["accuracy"] <= 1 for row in rows)
    made = sweep.load_sweep(uninterrupted).provenance
    assert len(made) == 1
    for field in ("command", "tlgates", "commit", "torch", "device", "threads", "date"):
        assert field in made[0]
    assert made[0]["settings"]["config"]["epochs"] == 1 and made[0]["threads"] == 1


def test_running_again_adds_no_row(uninterrupted: Path, tmp_path: Path) -> None:
    copy = tmp_path / "again.jsonl"
    copy.write_text(uninterrupted.read_text())
    assert main(["sweep", *GRID, "--out", str(copy)]) == 0
    assert results(copy) == results(uninterrupted)
    assert len(sweep.load_sweep(copy).provenance) == 2  # each invocation says how it ran


def test_a_killed_sweep_resumes_to_the_same_file(uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed.jsonl"
    # Two worker processes, killed (SIGKILL, the whole group) after some rows are written.
    process = subprocess.Popen(sweep_command(out, "--jobs", "2"), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(results(out)) < 3):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = results(out)
    assert 3 <= len(partial) < 8
    with out.open("a") as file:  # as if killed in the middle of writing a row
        file.write('{"kind": "result", "method": "fine')
    subprocess.run(sweep_command(out), check=True)
    assert results(out) == results(uninterrupted)


def test_a_stale_or_foreign_file_is_refused_naming_the_flag(uninterrupted: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture
                                                            ) -> None:
    other = [*GRID[:-3], "--epochs", "2", "--quiet", "--out", str(uninterrupted)]
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", *other])
    assert exit_.value.code == 2 and "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", *GRID, "--threads", "2", "--out", str(uninterrupted)])
    assert "--threads 1" in capsys.readouterr().err
    foreign = tmp_path / "notes.txt"
    foreign.write_text("shopping list\n")
    with pytest.raises(SystemExit):
        main(["sweep", *GRID, "--out", str(foreign)])
    assert "line 1" in capsys.readouterr().err
    assert foreign.read_text() == "shopping list\n"  # untouched
    foreign.write_text("no newline at the end")  # not a row cut short by a kill
    with pytest.raises(SystemExit):
        main(["sweep", *GRID, "--out", str(foreign)])
    assert foreign.read_text() == "no newline at the end"


@pytest.mark.parametrize(("flag", "value"), [
    ("--methods", "finetune,nope"), ("--methods", ","), ("--targets", "digitz"),
    ("--shots", "1,x"), ("--shots", "0"), ("--shots", "105"), ("--seeds", "0"),
    ("--jobs", "0"), ("--threads", "0"), ("--epochs", "0")])
def test_bad_arguments_exit_2_naming_the_flag(flag: str, value: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "never.jsonl"
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", *GRID, flag, value, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and flag in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_recheck_reproduces_rows_and_catches_a_changed_one(uninterrupted: Path,
                                                          tmp_path: Path) -> None:
    checks = sweep.recheck(sweep.load_sweep(uninterrupted), rows=2, seed=0)
    assert len(checks) == 2 and checks["same"].all() and checks["params_current"].all()
    assert checks["made_here"].all()  # the provenance records this machine's kind of CPU
    edited = tmp_path / "edited.jsonl"
    records = [json.loads(line) for line in uninterrupted.read_text().splitlines()]
    for record in records:
        if record["kind"] == "result":
            record["accuracy"] = 0.123
    edited.write_text("".join(json.dumps(record) + "\n" for record in records))
    checks = sweep.recheck(sweep.load_sweep(edited), rows=1, seed=0)
    assert not checks["same"].any()
    for record in records:
        if record["kind"] == "provenance":
            record["cpu"] = "another CPU, AVX512"
    edited.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert not sweep.load_sweep(edited).made_here


# --- the shipped results file ----------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped() -> sweep.Sweep:
    return sweep.load_sweep(SHIPPED)


def test_the_shipped_sweep_covers_every_method(shipped: sweep.Sweep) -> None:
    """At least 3 targets × 4 label counts × 5 seeds for every registered method."""
    frame = shipped.results
    assert not frame.duplicated(list(sweep.KEY)).any()
    for method in METHODS:
        rows = frame[frame["method"] == method]
        assert rows["target"].nunique() >= 3, method
        assert rows["shots"].nunique() >= 4, method
        per_cell = rows.groupby(["target", "shots"])["seed"].nunique()
        assert per_cell.min() >= 5, method


def test_random_rows_of_the_shipped_sweep_reproduce(shipped: sweep.Sweep) -> None:
    """Three rows chosen afresh each run (cheap ones: at most 2 labels per class)."""
    checks = sweep.recheck(shipped, rows=3, max_shots=2)
    print(checks.to_string())
    assert checks["params_current"].all(), checks
    if not shipped.made_here:
        cpus = {record.get("cpu", "not recorded") for record in shipped.provenance}
        pytest.skip(f"the file was made on another kind of CPU ({', '.join(sorted(cpus))}; "
                    f"here: {cpu.kind()}): its rows reproduce bit for bit only there")
    assert checks["same"].all(), checks
