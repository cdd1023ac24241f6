"""Accuracy of every inference step side by side: overall, per cell type, per experiment.

Steps are named per-well predictions (single view -> TTA mean -> vote -> stacker -> ensemble -> + plate
assignment); a split is one labelled set of wells (the validation folds' out-of-fold wells, or the test wells of a
synthetic set that ships `test_truth.csv`). Only wells in the truth are scored; a truth well a step did not
predict counts as wrong and is reported as missing.

    rep = {"validation": build_report(val_steps, val_truth), "test": build_report(test_steps, test_truth)}
    write_report(rep, "out/report")      # report.json, steps.png, cell_types.png

    python -m trainer.infer.report --truth test_truth.csv --step "TTA mean=wells.csv" \
        --step "+ assignment=assigned.csv" --out out/report
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellio.errors import MetadataError

from trainer.infer.aggregate import WellScores
from trainer.training.disk import replaced_atomically

__all__ = ["read_truth", "truth_of", "as_labels", "build_report", "write_report", "format_table", "main"]

log = logging.getLogger(__name__)

Labels = pd.DataFrame | pd.Series | Mapping[str, int] | WellScores


def read_truth(path: str | Path) -> pd.Series:
    """test_truth.csv (id_code,sirna) of a synthetic set -> Series id_code -> sirna."""
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"truth file {path} does not exist")
    frame = pd.read_csv(path)
    if not {"id_code", "sirna"} <= set(frame.columns):
        raise MetadataError(f"{path}: expected columns id_code,sirna, found {list(frame.columns)}")
    return as_labels(frame)


def truth_of(sites: pd.DataFrame, test_truth: str | Path | None = None) -> pd.Series:
    """Labels of treatment wells: from the site table (train) plus, when given, a synthetic set's test_truth.csv."""
    lab = sites[(sites["well_type"] == "treatment") & sites["sirna"].notna()].drop_duplicates("id_code")
    truth = pd.Series(lab["sirna"].to_numpy(dtype=np.int64), index=lab["id_code"].to_numpy())
    if test_truth is not None:
        truth = pd.concat([truth, read_truth(test_truth)])
        truth = truth[~truth.index.duplicated(keep="last")]
    return truth


def as_labels(labels: Labels, allowed: np.ndarray | None = None) -> pd.Series:
    """Any per-well prediction form -> Series id_code -> int sirna.

    WellScores are turned into labels by an argmax over `allowed` classes when given (the report passes the truth's
    treatment classes, so a model's control outputs never count as its answer for a treatment well).
    """
    if isinstance(labels, WellScores):
        keep = np.ones(len(labels.classes), bool) if allowed is None else np.isin(labels.classes, allowed)
        if not keep.any():
            raise MetadataError("the well scores have none of the truth's classes")
        return pd.Series(labels.classes[keep][np.argmax(labels.scores[:, keep], axis=1)], index=labels.id_codes)
    if isinstance(labels, pd.DataFrame):
        if labels["id_code"].duplicated().any():
            raise MetadataError(f"id_code {labels['id_code'][labels['id_code'].duplicated()].iloc[0]!r} "
                                f"appears twice")
        return pd.Series(labels["sirna"].to_numpy(dtype=np.int64), index=labels["id_code"].to_numpy())
    return pd.Series(labels).astype(np.int64)


def _experiment(id_codes: pd.Index) -> np.ndarray:
    return id_codes.str.split("_").str[0].to_numpy()


def build_report(steps: Mapping[str, Labels], truth: Labels) -> dict[str, Any]:
    """Accuracy per step (in the given order) overall, per cell type and per experiment."""
    t = as_labels(truth)
    if t.empty:
        raise MetadataError("the truth holds no wells")
    exps = _experiment(t.index)
    cells = np.array([e.split("-")[0] for e in exps])
    out: dict[str, Any] = {"n_wells": int(len(t)), "order": list(steps), "steps": {}}
    for name, pred in steps.items():
        p = as_labels(pred, allowed=np.unique(t.to_numpy())).reindex(t.index)
        correct = (p.to_numpy(dtype="float64", na_value=np.nan) == t.to_numpy()).astype(np.float64)
        frame = pd.DataFrame({"correct": correct, "experiment": exps, "cell_type": cells})
        out["steps"][name] = {
            "accuracy": float(correct.mean()),
            "n": int(len(correct)),
            "missing": int(p.isna().sum()),
            "per_cell_type": {k: float(v) for k, v in frame.groupby("cell_type")["correct"].mean().items()},
            "per_experiment": {k: float(v) for k, v in frame.groupby("experiment")["correct"].mean().items()},
        }
    return out


def _cell_types(rep: Mapping[str, Any]) -> list[str]:
    """The cell types a split's steps were scored on, sorted (the layout's order on RxRx1: its names are)."""
    return sorted({c for s in rep["steps"].values() for c in s["per_cell_type"]})


def format_table(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """Plain-text table: one row per step, one column per split (overall accuracy) plus per cell type."""
    lines = []
    width = max([28, *(len(n) + 2 for rep in reports.values() for n in rep["order"])])
    for split, rep in reports.items():
        cts = _cell_types(rep)
        # validation: what each step is expected to score on test once its rotations' risk is counted
        risk = any("expected_test" in s for s in rep["steps"].values())
        lines.append(f"[{split}] {rep['n_wells']} wells")
        lines.append(f"{'step':<{width}}{'accuracy':>10}" + (f"{'expected':>10}{'if wrong':>10}" if risk else "")
                     + "".join(f"{c:>9}" for c in cts))
        for name in rep["order"]:
            s = rep["steps"][name]
            extra = (f"{s.get('expected_test', float('nan')):>10.4f}{s.get('if_rotation_wrong', float('nan')):>10.4f}"
                     if risk else "")
            lines.append(f"{name:<{width}}{s['accuracy']:>10.4f}{extra}"
                         + "".join(f"{s['per_cell_type'].get(c, float('nan')):>9.4f}" for c in cts))
    return "\n".join(lines)


def write_report(reports: Mapping[str, Mapping[str, Any]], out_dir: str | Path,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """report.json + steps.png (bar chart of the steps per split) + cell_types.png (per-cell-type heatmap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "steps": out / "steps.png", "cell_types": out / "cell_types.png"}
    payload = {"splits": dict(reports), **(dict(extra) if extra else {})}
    with replaced_atomically(paths["json"]) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False))

    splits = list(reports)
    steps: list[str] = []
    for rep in reports.values():
        steps += [s for s in rep["order"] if s not in steps]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(steps)), 4.0))
    width = 0.8 / max(1, len(splits))
    for i, split in enumerate(splits):
        vals = [reports[split]["steps"].get(s, {}).get("accuracy", np.nan) for s in steps]
        xs = np.arange(len(steps)) + (i - (len(splits) - 1) / 2) * width
        ax.bar(xs, vals, width, label=f"{split} ({reports[split]['n_wells']} wells)")
        for x, v in zip(xs, vals):
            if np.isfinite(v):
                ax.text(x, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(steps)), steps, rotation=20, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("well accuracy")
    ax.set_title("Inference steps")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["steps"], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(splits), figsize=(5.0 * len(splits), 0.45 * len(steps) + 1.6), squeeze=False)
    for ax, split in zip(axes[0], splits):
        rep = reports[split]
        cts = _cell_types(rep)
        rows = [s for s in steps if s in rep["steps"]]
        grid = np.array([[rep["steps"][s]["per_cell_type"].get(c, np.nan) for c in cts] for s in rows])
        ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (r, c), v in np.ndenumerate(grid):
            ax.text(c, r, f"{v:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if v < 0.6 else "black")
        ax.set_xticks(np.arange(len(cts)), cts)
        ax.set_yticks(np.arange(len(rows)), rows)
        ax.set_title(f"{split}: accuracy per cell type")
    fig.tight_layout()
    fig.savefig(paths["cell_types"], dpi=110)
    plt.close(fig)
    log.info("report written to %s", out)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    from trainer.infer.aggregate import load_well_scores

    p = argparse.ArgumentParser(prog="python -m trainer.infer.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--truth", required=True, help="CSV id_code,sirna (e.g. test_truth.csv)")
    p.add_argument("--step", action="append", required=True, metavar="NAME=FILE",
                   help="a step's predictions: CSV id_code,sirna or well scores .npz; repeat in order")
    p.add_argument("--split", default="test", help="name of this labelled set in the report")
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)
    truth = read_truth(args.truth)
    steps: dict[str, Labels] = {}
    for item in args.step:
        name, sep, file = item.partition("=")
        if not sep:
            raise MetadataError(f"--step {item!r}: expected NAME=FILE")
        # .npz well scores: build_report takes the argmax over the truth's (treatment) classes only.
        steps[name] = load_well_scores(file) if file.endswith(".npz") else pd.read_csv(file)
    reports = {args.split: build_report(steps, truth)}
    write_report(reports, args.out)
    print(format_table(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
