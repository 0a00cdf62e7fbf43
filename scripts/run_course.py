"""Run the whole course headless: every ``notebooks/NN_*.ipynb`` in order, as a student would.

Each notebook runs with nbclient in its own folder on the ``python3`` kernel; the executed copy
and an HTML rendering go to ``build/course/`` (or ``--out``). A notebook that fails is still
written (with its error) and the others still run; the exit status is 1 if any failed.

    .venv/bin/python scripts/run_course.py                  # the whole course
    .venv/bin/python scripts/run_course.py --only 03        # names containing "03"
    .venv/bin/python scripts/run_course.py --only '0[12]_*' --out /tmp/course
    .venv/bin/python scripts/run_course.py --cold           # each as if it ran first

``--cold`` gives every notebook an empty data folder of its own (``$TLGATES_DATA``): it renders
the glyphs, trains the source model and every run it shows, as the first notebook a student
opens does. Without it the notebooks share ``data/`` (and its run cache), as in a course.
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"


@dataclass
class Outcome:
    """How one notebook's run went."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""


def find_notebooks(folder: Path, patterns: list[str] | None = None) -> list[Path]:
    """The course notebooks ``NN_*.ipynb`` in ``folder``, in order, filtered by ``patterns``.

    A pattern with a wildcard (``*?[``) must match the whole file name; a plain one is looked
    for anywhere in it.
    """
    found = sorted(folder.glob(NOTEBOOK_GLOB))
    if not patterns:
        return found
    globs = [p if any(c in p for c in "*?[") else f"*{p}*" for p in patterns]
    return [path for path in found if any(fnmatch.fnmatch(path.name, g) for g in globs)]


def first_error(nb: nbformat.NotebookNode) -> str:
    """``cell N: Error: message`` for the first error output in ``nb`` (1-based), else ``""``."""
    for index, cell in enumerate(nb.cells, start=1):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                message = str(output.get("evalue", "")).strip().splitlines()
                return f"cell {index}: {output.get('ename', 'Error')}: {' '.join(message)[:200]}"
    return ""


def run_notebook(path: Path, out_dir: Path, *, timeout: float, kernel: str) -> Outcome:
    """Execute ``path`` in its folder; write the executed copy and its HTML to ``out_dir``."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    ok, detail = True, ""
    try:
        client.execute()
    except Exception as err:  # a failing notebook must not stop the course run
        ok = False
        detail = first_error(nb) or f"{type(err).__name__}: {str(err).strip()[:200]}"
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    try:
        html, _ = HTMLExporter().from_notebook_node(nb)
        (out_dir / path.with_suffix(".html").name).write_text(html, encoding="utf-8")
    except Exception as err:
        ok = False
        detail = detail or f"HTML export failed: {type(err).__name__}: {err}"
    return Outcome(path.name, ok, seconds, " ".join(detail.split()))


@contextlib.contextmanager
def empty_data_folder(cold: bool) -> Iterator[None]:
    """With ``cold``, point ``$TLGATES_DATA`` (which the kernel inherits) at a new empty folder
    for the duration of the block."""
    if not cold:
        yield
        return
    before = os.environ.get("TLGATES_DATA")
    with tempfile.TemporaryDirectory(prefix="tlgates-cold-") as folder:
        os.environ["TLGATES_DATA"] = folder
        try:
            yield
        finally:
            if before is None:
                del os.environ["TLGATES_DATA"]
            else:
                os.environ["TLGATES_DATA"] = before


def format_table(outcomes: list[Outcome]) -> str:
    """A plain-text table: notebook, status, wall time, and what failed."""
    width = max([len("notebook")] + [len(o.name) for o in outcomes])
    lines = [f"{'notebook':<{width}}  {'status':<6}  {'seconds':>8}",
             f"{'-' * width}  {'-' * 6}  {'-' * 8}"]
    for o in outcomes:
        status = "ok" if o.ok else "FAILED"
        line = f"{o.name:<{width}}  {status:<6}  {o.seconds:8.1f}"
        lines.append(f"{line}  {o.detail}" if o.detail else line)
    total = sum(o.seconds for o in outcomes)
    lines.append(f"{'total':<{width}}  {'':<6}  {total:8.1f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Execute every course notebook (NN_*.ipynb) in order; write the executed "
                    "copies and HTML; print a table of wall times.")
    parser.add_argument("--notebooks", type=Path, default=REPO_ROOT / "notebooks",
                        metavar="DIR", help="folder of the notebooks (default: notebooks/)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "course",
                        metavar="DIR", help="where the executed copies and HTML go "
                                            "(default: build/course/)")
    parser.add_argument("--only", action="append", metavar="PATTERN",
                        help="run only the notebooks whose file name matches (a glob such as "
                             "'0[12]_*', or text such as '03'); may be repeated")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="time limit per cell (default: 600)")
    parser.add_argument("--kernel", default="python3", help="kernel name (default: python3)")
    parser.add_argument("--cold", action="store_true",
                        help="run every notebook from an empty data folder of its own, as if "
                             "it were the first one opened (default: they share data/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    notebooks = find_notebooks(args.notebooks, args.only)
    if not notebooks:
        only = f" matching {args.only}" if args.only else ""
        print(f"no notebooks {NOTEBOOK_GLOB}{only} in {args.notebooks}", file=sys.stderr)
        return 2
    outcomes = []
    for index, path in enumerate(notebooks, start=1):
        print(f"[{index}/{len(notebooks)}] {path.name} ...", flush=True)
        with empty_data_folder(args.cold):
            outcome = run_notebook(path, args.out, timeout=args.timeout, kernel=args.kernel)
        status = "ok" if outcome.ok else f"FAILED: {outcome.detail}"
        print(f"[{index}/{len(notebooks)}] {path.name}: {status} ({outcome.seconds:.1f} s)",
              flush=True)
        outcomes.append(outcome)
    print()
    print(format_table(outcomes))
    failed = [o.name for o in outcomes if not o.ok]
    print(f"\nExecuted copies and HTML in {args.out}")
    if failed:
        print(f"{len(failed)} of {len(outcomes)} notebooks failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
