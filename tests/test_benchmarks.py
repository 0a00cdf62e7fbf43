"""The benchmark scripts run end to end (one short round each) and report against a target."""
import os
import subprocess
import sys

import pytest

QUICK = ["--rounds", "1", "--steps", "1", "--batch-size", "4", "--threads", "1"]
SCRIPTS = {
    "bench_gtn.py": [],
    "bench_spottune.py": [],
    "bench_adafilter.py": [],
    "bench_ptu.py": ["--hidden", "8"],
    "bench_peft.py": [],
    # the real source model would be trained first; a random ResNet-18 on tiny images is quick
    "bench_delta.py": ["--arch", "resnet18", "--size", "16", "--examples", "2", "--repeats", "1"],
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_runs_and_reports(repo_root, script):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, repo_root / "benchmarks" / script, *QUICK,
                             *SCRIPTS[script]], capture_output=True, text=True, env=env,
                            cwd=repo_root, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ratio to finetune" in result.stdout
    assert "× a fine-tuning step:" in result.stdout and "× target." in result.stdout


def _run_script(repo_root, script, *args):
    result = subprocess.run([sys.executable, repo_root / "benchmarks" / script, *args],
                            capture_output=True, text=True, cwd=repo_root, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_dashboard_benchmark_presses_train_and_reports(repo_root):
    out = _run_script(repo_root, "bench_dashboards.py", "--only", "06_comparison")
    assert "One press of Train at the defaults" in out and "06_comparison" in out
    assert ("within" in out) != ("ABOVE" in out)


def test_thread_benchmark_times_each_count_idle_and_busy(repo_root):
    out = _run_script(repo_root, "bench_threads.py", "--rounds", "1", "--method", "linear")
    assert "idle: tlgates' choice takes" in out and "one core busy: tlgates' choice" in out
    assert "1 thread " in out and "tlgates' choice (" in out
