"""The instructors' and CI scripts: scripts/run_course.py, scripts/test.sh, .ci/run."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
from conftest import REPO_ROOT


def load_run_course() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_course",
                                                  REPO_ROOT / "scripts" / "run_course.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_course"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def write_notebook(path: Path, *sources: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, path)


def test_find_notebooks_orders_and_filters(tmp_path: Path) -> None:
    run_course = load_run_course()
    for name in ("02_b.ipynb", "00_a.ipynb", "10_c.ipynb", "notes.ipynb", "1_x.ipynb"):
        (tmp_path / name).write_text("{}")

    def names(*only: str) -> list[str]:
        return [p.name for p in run_course.find_notebooks(tmp_path, list(only))]

    assert names() == ["00_a.ipynb", "02_b.ipynb", "10_c.ipynb"]
    assert names("02") == ["02_b.ipynb"]
    assert names("0[02]_*") == ["00_a.ipynb", "02_b.ipynb"]
    assert names("_c", "00") == ["00_a.ipynb", "10_c.ipynb"]
    assert names("zz") == []


def test_run_course_writes_copies_and_html_and_reports_failures(tmp_path: Path) -> None:
    notebooks, out = tmp_path / "nb", tmp_path / "out"
    notebooks.mkdir()
    write_notebook(notebooks / "00_ok.ipynb",
                   "from pathlib import Path\nPath('ran_here.txt').write_text('yes')",
                   "print(6 * 7)")
    write_notebook(notebooks / "01_fails.ipynb", "assert 1 == 2, 'one is not two'", "print('x')")
    write_notebook(notebooks / "02_ok.ipynb", "print('still runs after a failure')")
    write_notebook(notebooks / "scratch.ipynb", "raise RuntimeError('not a course notebook')")

    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "run_course.py"),
         "--notebooks", str(notebooks), "--out", str(out), "--timeout", "60"],
        capture_output=True, text=True, timeout=300)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "01_fails.ipynb  FAILED" in result.stdout
    assert "AssertionError: one is not two" in result.stdout
    assert "scratch" not in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "00_ok.html", "00_ok.ipynb", "01_fails.html", "01_fails.ipynb",
        "02_ok.html", "02_ok.ipynb"]
    assert (notebooks / "ran_here.txt").read_text() == "yes"  # ran in the notebook's folder
    executed = nbformat.read(out / "00_ok.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "42\n"
    assert "still runs after a failure" in (out / "02_ok.html").read_text()
    assert "one is not two" in (out / "01_fails.html").read_text()


def test_run_course_without_matching_notebooks_fails(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "run_course.py"),
         "--notebooks", str(tmp_path), "--only", "99"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no notebooks" in result.stderr


@pytest.mark.parametrize("script", ["scripts/test.sh", ".ci/run"])
def test_shell_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(REPO_ROOT / script)], check=True)
