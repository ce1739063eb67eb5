"""Command line of `common.data` (docs/common.md §8):

    python -m common.data fetch mnist fashion_mnist cifar10 ag_news [--dir DIR] [--retries N]
"""
from __future__ import annotations

import argparse
import sys

from common.cli import non_negative_int
from common.data.fetch import DownloadError, fetch
from common.data.files import ChecksumMismatchError
from common.data.sources import SOURCES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m common.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="download data sets, verify their checksums")
    fetch_parser.add_argument("datasets", nargs="+", choices=sorted(SOURCES), metavar="NAME",
                              help=f"one or more of {', '.join(sorted(SOURCES))}")
    fetch_parser.add_argument("--dir", default=None, help="data root (default: $NFN_DATA_DIR)")
    fetch_parser.add_argument("--retries", type=non_negative_int, default=3,
                              help="attempts to resume a broken transfer (default 3)")
    args = parser.parse_args(argv)
    try:
        fetch(args.datasets, args.dir, retries=args.retries)
    except (ValueError, DownloadError, ChecksumMismatchError) as err:
        parser.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
