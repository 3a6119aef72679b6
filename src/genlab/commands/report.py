"""``genlab report RUN_DIR ...`` (a report of any runs side by side) and ``genlab reproduce`` (train and
evaluate every model of the lecture, and write its report)."""

from __future__ import annotations

import sys
from pathlib import Path

from genlab.commands.flags import DEVICE_HELP, bounded_int
from genlab.errors import one_line


def add(subparsers) -> None:
    p = subparsers.add_parser("report", help="build an HTML and Markdown report for one or more runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories, or folders of runs (as genlab reproduce writes)")
    p.add_argument("--out", default="report", help="output folder (default: ./report)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + "; computes the mean test energy of runs that "
                   "genlab evaluate has not scored")
    p.set_defaults(func=report)

    p = subparsers.add_parser("reproduce", help="train and evaluate every model of the lecture; write a report")
    p.add_argument("--quick", action="store_true", help="mnist-5k and short schedules (a few minutes on a CPU)")
    p.add_argument("--out", default=None, help="output folder (default: runs/reproduce-<time>)")
    p.add_argument("--data-dir", default=None, help="data directory (default: $GENLAB_DATA_DIR or the user cache)")
    p.add_argument("--models", nargs="+", help="only these models")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--jobs", type=bounded_int(1, 16), default=None,
                   help="processes that train models at once, one thread each when more than one (default: 2 "
                        "on a CPU for --quick, 1 for the full run; 3 on a GPU with four or more CPU cores)")
    p.set_defaults(func=reproduce)


def report(args) -> int:
    from genlab.config import check_device
    from genlab.report import report_runs

    check_device(args.device)
    html_path, md_path = report_runs(args.run_dirs, Path(args.out), args.device,
                                     say=lambda note: print(one_line(note), file=sys.stderr))
    print(html_path)
    print(md_path)
    return 0


def reproduce(args) -> int:
    from genlab.reproduce import reproduce

    # Ctrl-C or SIGTERM ends in StagesInterrupted: one line and 128 + the signal (genlab.errors.Stopped).
    out = reproduce(Path(args.out) if args.out else None, args.quick, args.data_dir, args.models, args.device,
                    args.jobs)
    print(out / "report.html")
    return 0
