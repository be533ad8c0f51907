"""The benchmark and fault-drill suite: this exporter side by side with
postgres_exporter, redis_exporter and Flower, then fault drills under a real
Prometheus. Run through scripts/bench-suite, which installs what it needs.

Writes results.json, summary.md and bench-compare.png to --out and prints
the summary; exits 1 if an expectation failed (a peer that served nothing,
a failed scrape in a drill, a counter reset, ...)."""
import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, log  # noqa: E402

PARTS = {
    "compare": "PostgreSQL and Redis exporters, scrape by scrape and under real Prometheus servers",
    "events": "Celery events counted vs published at increasing rates, ours and Flower",
    "drills": "fault drills: restarts under Prometheus, pub/sub buffer limit, hostile input, soak",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="scripts/bench-suite",
        description="Benchmarks this exporter against postgres_exporter, redis_exporter and Flower on the same "
                    "data in one run, then runs the fault drills. Full run: about 45 minutes on 2 cores.")
    p.add_argument("--quick", action="store_true",
                   help="small data and short windows: a smoke run of every part (a few minutes)")
    p.add_argument("--only", action="append", choices=list(PARTS),
                   help="run only this part (repeatable); default: " + ", ".join(PARTS))
    p.add_argument("--out", type=Path, default=ROOT / "target/bench",
                   help="folder for results.json, summary.md and bench-compare.png (default: target/bench)")
    p.add_argument("--binary", type=Path, default=ROOT / "target/release/bookedbarber-exporter",
                   help="the exporter to measure (default: the release build)")
    p.add_argument("--repeats", type=int, help="repeated runs for medians (default 3, quick 1)")
    p.add_argument("--rates", type=lambda s: [int(r) for r in s.split(",")],
                   help="event rates to try, events/s, comma-separated")
    p.add_argument("--soak-seconds", type=int, help="length of the soak drill (default 600, quick 20)")
    p.add_argument("--prom-seconds", type=int,
                   help="length of each Prometheus load window (default 180, quick 20)")
    args = p.parse_args(argv)
    if not args.binary.is_file():
        p.error(f"{args.binary} not found: build it with `cargo build --release --bins` "
                "(scripts/bench-suite does)")
    return args


def main(argv=None):
    args = parse_args(argv)
    parts = args.only or list(PARTS)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick, "parts": {}}
    summaries, failed = [], []
    started = time.monotonic()
    for name in parts:
        module = importlib.import_module(name)
        # Each part fills in its own defaults (full or quick) for what was
        # not given on the command line.
        if hasattr(module, "defaults"):
            module.defaults(args)
        log(f"{name}: {PARTS[name]}")
        t = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"bbx-bench-{name}-") as workdir:
            part = module.run(args, Path(workdir))
        part["seconds"] = round(time.monotonic() - t)
        results["parts"][name] = part
        summaries.append(f"## {name}: {PARTS[name]}\n\n{module.table(part)}\n")
        failed += [f"{name}: {f}" for f in module.checks(part)]
        log(f"{name}: done in {part['seconds']} s")
        # Written after each part, so that a later failure keeps what was measured.
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    results["failed"] = failed
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    import report
    png = report.plot(results, args.out / "bench-compare.png")
    summary = "\n".join(summaries)
    summary += "\n" + ("All expectations held." if not failed else "FAILED:\n" + "\n".join(f"- {f}" for f in failed))
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)
    log(f"suite done in {time.monotonic() - started:.0f} s; results in {args.out}"
        + (f", plot {png}" if png else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
