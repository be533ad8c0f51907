#!/usr/bin/env python3
"""Writes the BookedBarber Grafana dashboards (one JSON file each) from their
source in bbdash/. Run it after changing a dashboard and commit both:

    .venv/bin/python dashboards/generate.py            # into dashboards/
    .venv/bin/python dashboards/generate.py --out DIR  # elsewhere (the tests compare)

Needs grafana-foundation-sdk (tests/requirements.txt, installed in .venv).
"""
import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

try:
    from bbdash import DASHBOARDS
except ModuleNotFoundError as e:
    sys.exit(f"error: {e.name} is not installed: run with .venv/bin/python (scripts/test creates .venv "
             "from tests/requirements.txt) or pip install -r tests/requirements.txt")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE, help="directory to write into (default: %(default)s)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (args.out / name).write_text(build().render())
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
