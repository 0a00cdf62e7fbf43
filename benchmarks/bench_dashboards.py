"""How long *Train* takes on each notebook's dashboard with its defaults, in one run.

Each dashboard is built as its notebook builds it (its method, its view; the controls at their
defaults: 5 labels per class, 30 epochs, one seed) and :meth:`Dashboard.run` does what one press
of *Train* does: train, draw the live curves, add the table row, draw the view. The run cache
is off, so every press really trains. Threads: tlgates' own choice (``tlgates.cpu``), or
``--threads``. Target: at most 10 s each.

    python benchmarks/bench_dashboards.py               # every dashboard, once
    python benchmarks/bench_dashboards.py --rounds 3    # the median of 3 presses each
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import pandas as pd

os.environ["TLGATES_RUN_CACHE"] = "off"  # every press trains

from tlgates import cpu  # noqa: E402  (after the cache switch, which it does not read)
from tlgates.dashboard import Dashboard  # noqa: E402
from tlgates.plotting import adafilter, delta, gtn, peft, ptu, spottune  # noqa: E402
from tlgates.source import source_model  # noqa: E402

TARGET_SECONDS = 10.0
# notebook → (the method its dashboard trains first, its view of a result)
DASHBOARDS = {
    "00_transfer_basics": ("l2sp", None),
    "01_gtn": ("gtn", gtn.dashboard_view),
    "02_delta": ("delta", delta.dashboard_view),
    "03_spottune": ("spottune", spottune.dashboard_view),
    "04_adafilter": ("adafilter", adafilter.dashboard_view),
    "05_ptu": ("ptu", ptu.dashboard_view),
    "06_comparison": ("finetune", None),
    "07_parameter_efficient": ("lora", peft.dashboard_view),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="presses per dashboard")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: tlgates' choice, made at each press)")
    parser.add_argument("--only", action="append", default=[], choices=DASHBOARDS,
                        help="only this notebook's dashboard (repeatable)")
    args = parser.parse_args()
    if args.threads:
        os.environ["TLGATES_THREADS"] = str(args.threads)
    source = source_model(progress=False)
    rows = []
    for notebook in args.only or DASHBOARDS:
        method, view = DASHBOARDS[notebook]
        seconds, threads = [], []
        for _ in range(args.rounds):
            dash = Dashboard(method, {}, source=source, view=view)
            start = time.perf_counter()
            result = dash.run()
            seconds.append(time.perf_counter() - start)
            threads.append(result.threads)
        median = statistics.median(seconds)
        rows.append({"notebook": notebook, "method": method, "seconds": round(median, 1),
                     "threads": "/".join(map(str, sorted(set(threads)))),
                     "target": "within" if median <= TARGET_SECONDS else "ABOVE"})
        print(rows[-1], flush=True)
    print(f"\nOne press of Train at the defaults (median of {args.rounds}), "
          f"target ≤ {TARGET_SECONDS:g} s, {cpu.kind()}:")
    print(pd.DataFrame(rows).set_index("notebook").to_string())


if __name__ == "__main__":
    main()
