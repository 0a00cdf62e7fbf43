import json
import subprocess
import sys

import pytest

from tlgates.__main__ import main


@pytest.mark.parametrize("argv, names", [
    (["run", "finetune", "--shots", "0"], "shots"),
    (["run", "finetune", "--shots", "1000"], "shots"),
    (["run", "nope"], "method 'nope'"),
    (["run", "finetune", "--target", "mnist-photo"], "target"),
    (["run", "finetune", "--lr", "-0.1"], "lr"),
    (["run", "finetune", "--epochs", "0"], "epochs"),
    (["run", "finetune", "--seeds", "0"], "seeds"),
    (["run", "l2sp", "--set", "alpha=-1"], "alpha"),
    (["run", "l2sp", "--set", "gamma=1"], "gamma"),
    (["run", "l2sp", "--set", "alpha"], "--set"),
    (["run", "finetune", "--shots", "five"], "--shots"),
    (["fly"], "command"),
])
def test_bad_arguments_exit_2_with_one_line_naming_the_argument(argv, names, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tlgates: error:"), err
    assert names in err


def test_methods_lists_every_baseline(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("scratch", "linear", "finetune", "l2", "l2sp"):
        assert f"\n{name} " in f"\n{out}"
    assert "--set alpha=0.1" in out


def run_json(*args: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "tlgates", "run", *args, "--json", "--quiet"],
        capture_output=True, text=True, check=True, timeout=600)
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_json_output_and_repeatability():
    args = ("finetune", "--shots", "2", "--seeds", "2", "--epochs", "3")
    first = run_json(*args)
    assert {"method", "target", "shots", "seeds", "accuracies", "mean", "std",
            "seconds"} <= set(first)
    assert first["method"] == "finetune" and first["shots"] == 2 and first["seeds"] == [0, 1]
    assert len(first["accuracies"]) == 2 and first["seconds"] > 0
    assert run_json(*args)["accuracies"] == first["accuracies"]
