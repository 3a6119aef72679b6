"""``genlab datasets``: which data sets are found where (or why not), and ``--download`` for the missing files."""

from __future__ import annotations

import json


def add(subparsers) -> None:
    p = subparsers.add_parser("datasets", help="list the data sets and where they were found, or why not")
    p.add_argument("--data-dir", default=None, help="data directory (default: $GENLAB_DATA_DIR or the user cache)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--download", nargs="+", choices=("mnist", "fashion-mnist"), metavar="NAME",
                   help="download the missing files of these data sets (mnist, fashion-mnist) into the data directory")
    p.set_defaults(func=command)


def command(args) -> int:
    from genlab.data import describe_datasets, load_dataset

    for name in args.download or ():
        for split in ("train", "test"):  # fetches whatever files are missing, checked by MD5
            load_dataset(name, split, args.data_dir, download=True)
    rows = describe_datasets(args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        state = "found" if row.get("available") else "missing"
        where = row.get("path") or row.get("why") or ""
        sizes = row.get("sizes")
        extra = f"  ({', '.join(f'{k} {v}' for k, v in sizes.items())})" if sizes else ""
        print(f"{row['name']:<14} {state:<8} {where}{extra}")
    return 0
