"""Every command in the README works as written, after its set-up command.

The commands are read from the README's ``bash`` blocks, as a newcomer would copy them, and each
is checked in one of three ways (every command must match exactly one entry of ``CHECKS``, so a
new command in the README needs a decision here):

- ``complete``: run to the end; it must exit 0.
- ``starts``: a long job (the 51-minute sweep, the JupyterLab server, the course); it runs until
  it prints what it prints once its arguments were all accepted and the work began, then it is
  stopped.
- ``needs data``: a command for the reader's own data set (``/data/flowers``); it must stop
  before training, with the one-line error that names ``--target``.

The tlgates commands run in a scratch folder with the checkout's ``.venv`` and a copy of
``results/`` (what they write, ``mine.jsonl``, ``tex/``, never touches the checkout), the
scripts in the checkout. ``bash scripts/test.sh`` is the command that runs this test; conda is
checked where it is installed.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

STARTS_WITHIN_S = 180
# (text that identifies the command, how it is checked, what shows it started / why skipped)
CHECKS = [
    ("sweep --methods all", "starts", "sweep ("),
    ("sweep --methods finetune,gtn", "starts", "sweep ("),
    ("bash scripts/lab.sh", "starts", "is running at"),
    ("scripts/run_course.py", "starts", "00_transfer_basics.ipynb ..."),
    ("bash scripts/test.sh", "skip", "it is the command that runs this test"),
    ("conda env create", "conda", "conda is not installed here"),
    ("tlgates methods", "complete", ""),
    ("tlgates run finetune --shots 5 --seeds 3", "complete", ""),
    ("tlgates run l2sp --set alpha=0.5", "complete", ""),
    ("tlgates run spottune --preset paper", "complete", ""),
    ("write_texture_folder('tex')", "complete", ""),
    ("--target folder:tex", "complete", ""),
    ("folder:/data/flowers", "needs data", "--target"),
]


def readme_commands(readme: Path) -> list[str]:
    """The commands of the README's ``bash`` blocks: continuation lines joined, comments cut."""
    blocks = re.findall(r"```bash\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
    commands = []
    for block in blocks:
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _check_of(command: str) -> tuple[str, str]:
    matches = [(how, what) for text, how, what in CHECKS if text in command]
    assert len(matches) == 1, f"decide how to check the README command {command!r}: {matches}"
    return matches[0]


@pytest.fixture(scope="module")
def workdir(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    (folder / ".venv").symlink_to(repo_root / ".venv")
    shutil.copytree(repo_root / "results", folder / "results")
    return folder


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _starts(command: str, cwd: Path, marker: str, log: Path) -> None:
    with log.open("w") as out:
        process = subprocess.Popen(command, shell=True, cwd=cwd, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=dict(os.environ, BROWSER="true"))
    try:
        deadline = time.monotonic() + STARTS_WITHIN_S
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if marker in text:
                return
            assert process.poll() is None, f"{command!r} exited {process.returncode}:\n{text}"
            time.sleep(0.5)
        pytest.fail(f"{command!r} did not print {marker!r} within {STARTS_WITHIN_S} s:\n"
                    + log.read_text(errors="replace")[-3000:])
    finally:
        _stop(process)


def test_every_command_has_a_check(repo_root):
    commands = readme_commands(repo_root / "README.md")
    assert len(commands) >= 10
    for command in commands:
        _check_of(command)
    unused = [text for text, _, _ in CHECKS if not any(text in c for c in commands)]
    assert not unused, f"checks of commands no longer in the README: {unused}"


@pytest.mark.parametrize("command", readme_commands(Path(__file__).resolve().parent.parent
                                                    / "README.md"))
def test_readme_command_works_as_written(command, repo_root, workdir, tmp_path):
    how, what = _check_of(command)
    in_checkout = command.startswith("bash scripts/") or "scripts/run_course.py" in command
    cwd = repo_root if in_checkout else workdir
    if how == "skip":
        pytest.skip(what)
    if how == "conda":
        if shutil.which("conda") is None:
            pytest.skip(what)
        how = "complete"
    if how == "starts":
        _starts(command, cwd, what, tmp_path / "output.txt")
        return
    result = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=600)
    if how == "needs data":  # under torchrun, every process says so and torchrun fails
        assert result.returncode != 0, result.stdout[-2000:]
        assert f"tlgates: error: {what} folder:/data/flowers/train: " in result.stderr, \
            result.stderr[-2000:]
        return
    assert result.returncode == 0, f"{command!r}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
