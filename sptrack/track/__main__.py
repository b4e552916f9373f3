"""``python -m sptrack.track replay FILE [--tracking-uri URI]``: send an MLflow spill file left by an outage."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sptrack.track")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("replay", help="send the unsent records of MLflow spill files to their runs")
    rep.add_argument("files", nargs="+", help=".sptrack/mlflow-spill/<run_id>.jsonl files")
    rep.add_argument("--tracking-uri", default=None, help="default: the URI recorded in the file")
    args = parser.parse_args(argv)
    from sptrack.track.base import TrackerError
    from sptrack.track.mlflow import replay

    status = 0
    for path in args.files:
        try:
            points = replay(path, tracking_uri=args.tracking_uri)
            print(f"{path}: sent {points} metric points")
        except (TrackerError, OSError, ValueError) as e:
            print(f"{path}: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
