"""The two pictures of a map run: a clustered cosine-similarity heatmap of a few known complexes (one panel per
map), and bars of relationship recall per annotation source for each map (method x correction).

The complexes are CORUM's (annotations.complexes): the largest ones with enough members in the map, members
shared with an earlier complex dropped, rows ordered by average-linkage clustering of 1 - cosine so a complex the
map recovers shows as a bright block; the strip on the left gives each gene's complex.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.maps.profiles import PerturbationMap
from trainer.maps.recall import cosine_matrix, table_column

__all__ = ["pick_complexes", "similarity_heatmaps", "recall_bars"]


def pick_complexes(members: Mapping[str, Sequence[str]], n: int = 6, min_genes: int = 3) -> dict[str, list[str]]:
    """Up to `n` complexes, largest first, each keeping only genes no earlier pick has (so a gene is drawn once)."""
    taken: set[str] = set()
    picked: dict[str, list[str]] = {}
    for name, genes in sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        fresh = [g for g in genes if g not in taken]
        if len(fresh) >= min_genes:
            picked[name] = fresh
            taken.update(fresh)
        if len(picked) == n:
            break
    return picked


def _order(sim: np.ndarray) -> np.ndarray:
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if len(sim) < 3:
        return np.arange(len(sim))
    dist = np.clip(1.0 - sim, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    return leaves_list(linkage(squareform(dist, checks=False), method="average"))


def similarity_heatmaps(maps: Mapping[str, PerturbationMap], complexes: Mapping[str, Sequence[str]],
                        path: str | Path, ncols: int = 3) -> Path:
    """One panel per map (`ncols` a row): the cosine similarity of the complexes' genes, clustered; `complexes`
    from pick_complexes (genes absent from a map are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    names = list(maps)
    ncols = min(ncols, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.2 * nrows + 0.8), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    palette = plt.get_cmap("tab10")
    for ax, name in zip(axes.flat, names):
        pmap = maps[name]
        position = {label: i for i, label in enumerate(pmap.labels)}
        genes, group = [], []
        for k, members in enumerate(complexes.values()):
            for g in members:
                if g in position:
                    genes.append(g)
                    group.append(k)
        if len(genes) < 2:
            ax.set_title(f"{name}\n(fewer than 2 complex genes in the map)")
            ax.axis("off")
            continue
        sim = cosine_matrix(pmap.features[[position[g] for g in genes]])
        order = _order(sim)
        ax.imshow(sim[np.ix_(order, order)], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        strip = np.asarray(group)[order][:, None]
        inset = ax.inset_axes([-0.06, 0, 0.04, 1])
        inset.imshow(strip, cmap=ListedColormap([palette(i % 10) for i in range(len(complexes))]),
                     vmin=0, vmax=max(len(complexes) - 1, 1), aspect="auto", interpolation="nearest")
        inset.axis("off")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette(i % 10)) for i in range(len(complexes))]
    fig.legend(handles, [c[:40] for c in complexes], loc="lower center", ncol=min(3, len(complexes)), fontsize=7,
               frameon=False)
    fig.suptitle("cosine similarity of CORUM complex members (clustered)", fontsize=11)
    fig.tight_layout(rect=(0, 0.8 / (4.2 * nrows + 0.8) + 0.03, 1, 0.97))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def recall_bars(table: pd.DataFrame, path: str | Path, sources: Sequence[str],
                thresholds: Sequence[tuple[float, float]],
                label_cols: Sequence[str] = ("method", "correction")) -> Path:
    """Grouped bars: x = annotation source, one bar per row of `table`, one panel per threshold pair. `table` has
    the columns recall.table_column(source, lo, hi) (pipeline.benchmark_row). With two label columns (method,
    correction) a bar's colour is its method and its shade its correction (lightest: the first correction), so
    dozens of rows stay readable; the legends sit below the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Patch

    present = [c for c in label_cols if c in table.columns]
    first = table[present[0]].astype(str).tolist()
    second = table[present[1]].astype(str).tolist() if len(present) > 1 else [""] * len(table)
    groups, shades = list(dict.fromkeys(first)), list(dict.fromkeys(second))
    # tab10 without its grey (grey is the corrections' legend) then tab20's light tones
    palette = [c for k, c in enumerate(plt.get_cmap("tab10").colors) if k != 7]
    palette += list(plt.get_cmap("tab20").colors[1::2])

    def hue(k: int) -> tuple:
        return palette[k % len(palette)]

    def colour(i: int) -> tuple:  # a method with a single row (e.g. a reference) is drawn solid
        alone = len(shades) == 1 or first.count(first[i]) == 1
        alpha = 1.0 if alone else 0.3 + 0.7 * shades.index(second[i]) / (len(shades) - 1)
        return to_rgba(hue(groups.index(first[i])), alpha)

    n = len(table)
    fig, axes = plt.subplots(len(thresholds), 1, squeeze=False,
                             figsize=(min(18.0, max(8.0, 0.12 * n * len(sources) + 2)), 3.2 * len(thresholds) + 1.2))
    width = 0.85 / max(n, 1)
    x = np.arange(len(sources))
    for ax, (lo, hi) in zip(axes[:, 0], thresholds):
        cols = [table_column(src, lo, hi) for src in sources]
        for i in range(n):
            ax.bar(x + (i - (n - 1) / 2) * width, table.iloc[i][cols].to_numpy(dtype=float), width,
                   color=colour(i), edgecolor="none")
        ax.axhline(lo + 1 - hi, color="k", lw=0.8, ls="--")  # what a random map recalls
        ax.set_xticks(x, sources)
        ax.set_ylabel(f"recall at {lo:g}/{hi:g}")
        ax.set_ylim(0, 1)
    handles = [Patch(color=hue(k), label=g) for k, g in enumerate(groups)]
    if len(shades) > 1:
        handles += [Patch(color=to_rgba("0.2", 0.3 + 0.7 * k / (len(shades) - 1)), label=c)
                    for k, c in enumerate(shades)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle("relationship recall per annotation source, bars in table order (dashed: a random map)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 + 0.025 * (len(handles) // 6), 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
