"""The benchmark and drill suite (scripts/bench-suite) in its quick form:
every peer starts and serves, every drill runs and its expectations hold.
The full run (about 45 minutes) is not part of the test run; its figures
are in docs/benchmarks.md and docs/reliability.md."""
import json
import subprocess

from support.tools import ROOT, VENV_BIN, exporter_binary, require


def test_quick_suite_runs_every_part_and_every_expectation_holds(tmp_path):
    for tool in ("prometheus", "prometheus-postgres-exporter", "prometheus-redis-exporter", "wrk",
                 "redis-server", "celery"):
        require(tool)
    out = tmp_path / "bench"
    proc = subprocess.run([VENV_BIN / "python", ROOT / "scripts/bench/suite.py", "--quick",
                           "--out", out, "--binary", exporter_binary()],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"suite failed\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-6000:]}"
    results = json.loads((out / "results.json").read_text())
    assert results["failed"] == []
    assert set(results["parts"]) == {"compare", "events", "drills"}

    scrapes = results["parts"]["compare"]["scrapes"]
    assert set(scrapes) == {"ours", "pge_default", "pge_queries", "redis_exporter", "flower"}
    for name, figures in scrapes.items():
        assert figures["series"]["median"] > 0, name
        assert figures["latency_p99_ms"]["median"] > 0, name
        assert figures["wrk_rps"]["median"] > 0, name
    # Ours collects in the background: a scrape runs no SQL of its own,
    # while postgres_exporter runs its queries on every scrape.
    assert scrapes["pge_default"]["sql_statements_per_scrape"]["median"] >= 1
    for phase in ("1_prometheus", "2_prometheus"):
        assert results["parts"]["compare"]["prometheus"][phase]["ours"]["statements_per_min"] > 0

    png = out / "bench-compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "All expectations held." in summary
    assert "| scrape latency p99 (ms) |" in summary
