"""The suite's plot: scrape latency per exporter, and Celery events counted
against events published per exporter, side by side in one PNG."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only
import matplotlib.pyplot as plt  # noqa: E402

import compare  # noqa: E402
import events  # noqa: E402


def latency(scrapes, ax):
    names = list(scrapes)
    x = range(len(names))
    for offset, key, label in ((-0.2, "latency_p50_ms", "p50"), (0.2, "latency_p99_ms", "p99")):
        med = [scrapes[n][key]["median"] for n in names]
        err = [[m - scrapes[n][key]["min"] for n, m in zip(names, med)],
               [scrapes[n][key]["max"] - m for n, m in zip(names, med)]]
        ax.bar([i + offset for i in x], med, width=0.4, yerr=err, capsize=3, label=label)
    ax.set_yscale("log")
    ax.set_xticks(list(x), [compare.SHORT_LABELS[n] for n in names], fontsize=8)
    ax.set_ylabel("scrape latency (ms, log scale)")
    ax.set_title("GET /metrics latency, median of runs (bars: min–max)")
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)


def plot(results, path: Path):
    """Writes the PNG; returns its path, or None when no part has anything to plot."""
    parts = results["parts"]
    panels = [p for p in ("compare", "events") if p in parts]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5.5), squeeze=False)
    for ax, name in zip(axes[0], panels):
        if name == "compare":
            latency(parts["compare"]["scrapes"], ax)
        else:
            events.plot(parts["events"], ax)
    fig.suptitle(f"One run on {results['date']}" + (" (quick smoke run)" if results["quick"] else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
