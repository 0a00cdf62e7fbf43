"""tlgates' thread choice against fixed thread counts, on an idle and on a busy machine, in one run.

The same training (fine-tuning, 5 labels per class, one seed, 30 epochs, no validation curves;
the run cache off) is timed with every fixed thread count from 1 to the number of cores and with
tlgates' own choice (``tlgates.cpu.choose_threads``), in turns, first with nothing else running,
then beside a competing process that keeps one core busy (a Python busy loop, the kind of load a
second notebook or a browser puts on a laptop). Reported: the median seconds of each, the count
tlgates chose, and how its time compares with the best fixed count's in each condition.

    python benchmarks/bench_threads.py             # 3 rounds (about 3 minutes on 2 cores)
    python benchmarks/bench_threads.py --rounds 5
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import pandas as pd

os.environ["TLGATES_RUN_CACHE"] = "off"  # every run trains

from tlgates import cpu  # noqa: E402
from tlgates.experiment import run_method  # noqa: E402
from tlgates.source import source_model  # noqa: E402

TOLERANCE = 1.15  # the choice should cost at most this much more than the best fixed count


@contextlib.contextmanager
def competitor(busy: bool) -> Iterator[None]:
    """A process spinning on one core for the duration of the block (when ``busy``)."""
    if not busy:
        yield
        return
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it start before anything is measured or chosen
        yield
    finally:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed turns of each count")
    parser.add_argument("--method", default="finetune")
    args = parser.parse_args()
    os.environ.pop("TLGATES_THREADS", None)
    source = source_model(progress=False)
    counts: list[int | None] = [*range(1, cpu.cores() + 1), None]  # None: tlgates' choice
    rows = []
    for condition, busy in (("idle", False), ("one core busy", True)):
        seconds: dict[int | None, list[float]] = {count: [] for count in counts}
        chosen = []
        with competitor(busy):
            for _ in range(args.rounds):
                for count in counts:
                    if count is None:
                        cpu._last_choice = None  # look at the machine now, as a new run would
                    start = time.perf_counter()
                    result = run_method(args.method, seeds=[0], source=source, progress=False,
                                        curves=False, threads=count)
                    seconds[count].append(time.perf_counter() - start)
                    if count is None:
                        chosen.append(result.threads)
        best = min(statistics.median(seconds[c]) for c in counts if c is not None)
        for count in counts:
            median = statistics.median(seconds[count])
            label = f"tlgates' choice ({'/'.join(map(str, sorted(set(chosen))))})" \
                if count is None else f"{count} thread{'s' if count > 1 else ''}"
            rows.append({"machine": condition, "threads": label, "seconds": round(median, 1),
                         "ratio_to_best_fixed": round(median / best, 2)})
        print(pd.DataFrame(rows[-len(counts):]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    print(f"\n{args.method}, 5 labels per class, one seed, median of {args.rounds} turns "
          f"({cpu.cores()} cores, {cpu.kind()}):")
    print(table.to_string(index=False))
    choice = table[table["threads"].str.startswith("tlgates")]
    for row in choice.itertuples():
        ratio = row.ratio_to_best_fixed
        verdict = "within" if ratio <= TOLERANCE else "ABOVE"
        print(f"{row.machine}: tlgates' choice takes {ratio:.2f}× the best fixed count's "
              f"time: {verdict} the {TOLERANCE:g}× target.")


if __name__ == "__main__":
    main()
