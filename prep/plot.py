"""`prep inspect OUT --plot FILE.png`: an output's length histogram (with the packing efficiency of
a packed SFT output, or a retrieval output's documents), or a latent cache's bucket occupancy, as a
PNG. matplotlib is an optional extra (`pip install 'prep[plot]'`)."""

from __future__ import annotations

from pathlib import Path

from loaders.manifest import load
from prep.errors import PrepError


def plot(out: Path, target: Path) -> str:
    """Draw the figure of `out` into `target`; returns a one-line description of what was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise PrepError("--plot needs matplotlib, an optional extra: pip install 'prep[plot]' (or pip install matplotlib)") from None
    manifest = load(out)
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=110)
    if manifest["kind"] == "latents":
        buckets = manifest["datasets"]["latents"]["buckets"]
        names = sorted(buckets, key=lambda b: [int(x) for x in b.split("x")])
        axes.bar(names, [buckets[n] for n in names], color="#4c72b0")
        axes.set_xlabel("bucket (W x H)")
        axes.set_ylabel("items")
        axes.tick_params(axis="x", rotation=60)
        title, said = f"{out.name}: {manifest['stats']['items']:,} items in {len(names)} buckets", "bucket occupancy"
    else:
        stats = manifest["stats"]
        what = "documents"
        hist = stats.get("length_histogram") or {"edges": [0, 1], "counts": [0]}
        if "retrieval" in manifest:
            hist, what = manifest["datasets"]["documents"]["length_histogram"], "retrieval documents"
        elif stats.get("packing"):
            what = "samples"
        edges, counts = hist["edges"], hist["counts"]
        labels = [f"{lo}-{hi - 1}" if hi - lo > 1 else str(lo) for lo, hi in zip(edges, edges[1:])]
        axes.bar(range(len(counts)), counts, color="#4c72b0")
        axes.set_xticks(range(len(counts)), labels, rotation=60, fontsize=8)
        axes.set_xlabel("length (tokens, power-of-two bins)")
        axes.set_ylabel(what)
        title = f"{out.name}: {stats['documents']:,} {what if what != 'samples' else 'documents'}, {stats['tokens']:,} tokens"
        said = f"{what} length histogram"
        if stats.get("packing"):
            p = stats["packing"]
            title += f"; {p['samples']:,} samples in {p['packs']:,} packs of {p['capacity']:,}: {100 * p['efficiency']:.2f}% full"
            said += " and packing efficiency"
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    figure.savefig(tmp, format="png")
    plt.close(figure)
    tmp.replace(target)
    return f"{target}: {said}"
