"""``--plot``: throughput (rows x classes per second) against class count, one line per peer."""

import importlib.util
import os

from . import peers as peer_registry

# From short rows to an LLM vocabulary, about evenly spaced on a log axis.
PLOT_CLASSES = (10, 32, 100, 316, 1000, 3162, 10000, 32000)
# Elements per point (rows = total / classes): large enough to leave the caches, small enough
# that the slowest peer takes well under a second per call.
PLOT_TOTAL = 1 << 22


class MissingExtra(ValueError):
    """An optional dependency is absent; the message names the extra that brings it."""


def require_matplotlib():
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingExtra("--plot needs matplotlib: pip install 'kdloss[bench]' (or pip install matplotlib)")


def check_format(path):
    """``path``'s suffix names a format matplotlib writes (ValueError naming it otherwise)."""
    require_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    if suffix not in supported:
        what = f".{suffix} files" if suffix else "a file without a suffix"
        formats = ", ".join("." + name for name in sorted(supported))
        raise ValueError(f"--plot {path}: matplotlib cannot write {what}; use one of {formats}")


def draw(sweep, path, title):
    """Write a PNG of ``sweep`` (from compare.throughput_sweep) to ``path``."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 5))
    for peer in dict.fromkeys(point["peer"] for point in sweep):
        points = sorted((p["classes"], p["elements_per_s"]) for p in sweep if p["peer"] == peer)
        baseline = peer_registry.PEERS[peer].baseline  # yardsticks, not losses: dashed
        axes.plot([c for c, _ in points], [e for _, e in points], marker="." if baseline else "o",
                  linestyle="--" if baseline else "-", label=peer_registry.PEERS[peer].label,
                  linewidth=2.5 if peer == "kdloss" else 1.2)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("classes per row (rows = total / classes)")
    axes.set_ylabel("elements (rows x classes) per second")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: lines cross the whole plot
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
