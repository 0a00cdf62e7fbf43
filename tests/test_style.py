"""The code and the notebooks' code cells pass ruff (pyflakes, pycodestyle, lines ≤ 100)."""
import subprocess
import sys


def test_code_and_notebooks_pass_ruff(repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
        cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
