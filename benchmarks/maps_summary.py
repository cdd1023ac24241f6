"""One line per benchmark table (benchmarks/maps.py's benchmark.csv): a method's recall per source and mAP under
one correction, beside the best baseline's value of each column (over the baselines' corrected rows), and whether
the method beats, ties or trails it — to read several runs (training seeds, screens) side by side. Where the table
has the true phenotypes' row (benchmarks/maps.py's `true_phenotypes`: the recall of the screen's true gene effects),
each recall column also gets that value, and `trails_beyond_truth` counts the columns the method trails where the
best baseline recalls more than the true effects do: on a source with a handful of pairs, mostly not linked by the
screen's complexes (SIGNOR), that is chance more than biology.

    python benchmarks/maps_summary.py benchmarks/results/maps benchmarks/results/maps_s1 \\
        benchmarks/results/maps_seeds/* [--method cellio] [--correction tvn] [--out summary.csv]

`--against DIR [DIR ...]` takes the baselines and the true phenotypes from other benchmark tables (of the same
screens; one for all results, or one per result): to score `make maps` runs, whose OUT/maps/benchmark.csv (written
by `python -m trainer.maps`) holds only their own rows and no `method` column (its rows are read as `--method`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

BASELINES = ("intensity", "random_cnn", "random_cnn_penultimate", "cp_measure")
SOURCES = ("CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB")
THRESHOLDS = ("0.05_0.95", "0.1_0.9")
TRUTH = "true_phenotypes"


def columns() -> list[str]:
    return [f"recall_{s}_{t}" for s in SOURCES for t in THRESHOLDS] + ["replicate_mAP", "sister_mAP"]


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path / "benchmark.csv" if path.is_dir() else path)


def summarise(path: Path, method: str, correction: str, against: Path | None = None) -> dict:
    """The method's row and the best corrected baseline per column of one benchmark.csv (the baselines and the true
    phenotypes from `against`'s table where given; a table without a `method` column is all `method`)."""
    table = read_table(path)
    if "method" not in table.columns:
        table = table.assign(method=method)
    row = table[(table["method"] == method) & (table["correction"] == correction)]
    if len(row) != 1:
        raise SystemExit(f"{path}: no single {method} / {correction} row")
    reference = read_table(against) if against is not None else table
    base = reference[reference["method"].isin(BASELINES) & (reference["correction"] != "none")]
    if base.empty:
        raise SystemExit(f"{against or path}: no corrected baseline rows ({', '.join(BASELINES)})")
    truth = reference[reference["method"] == TRUTH]
    out: dict = {"run": str(path)}
    wins = ties = beyond = 0
    for col in columns():
        ours, best = float(row[col].iloc[0]), float(base[col].max())
        out[col], out[f"best_baseline_{col}"] = round(ours, 3), round(best, 3)
        wins += ours > best + 1e-9
        ties += abs(ours - best) <= 1e-9
        if len(truth) and col.startswith("recall_"):
            ceiling = float(truth[col].iloc[0])
            out[f"true_phenotypes_{col}"] = round(ceiling, 3)
            beyond += ours < best - 1e-9 and best > ceiling + 1e-9
    out.update({"beats": wins, "ties": ties, "trails": len(columns()) - wins - ties,
                "trails_beyond_truth": beyond if len(truth) else float("nan")})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="benchmark directories (or benchmark.csv files)")
    p.add_argument("--method", default="cellio")
    p.add_argument("--correction", default="tvn")
    p.add_argument("--against", nargs="+", default=[],
                   help="the benchmark tables (directories or CSVs) holding the baselines' rows, where the results' "
                        "tables do not (a `make maps` run's OUT/maps): one for all results, or one per result")
    p.add_argument("--out", help="write the summary as CSV too")
    args = p.parse_args(argv)
    if len(args.against) not in (0, 1, len(args.results)):
        p.error(f"--against: {len(args.against)} tables for {len(args.results)} results; give one, or one per result")
    against = [Path(a) for a in args.against] or [None]
    if len(against) == 1:
        against *= len(args.results)
    frame = pd.DataFrame([summarise(Path(r), args.method, args.correction, table)
                          for r, table in zip(args.results, against)])
    short = ["run"] + [c for c in columns() if "0.05" in c or "mAP" in c] + ["beats", "ties", "trails",
                                                                           "trails_beyond_truth"]
    print(f"{args.method} / {args.correction} (recall at 0.05/0.95 and mAP; beats/ties/trails over all "
          f"{len(columns())} columns against the best corrected baseline of each)")
    print(frame[short].to_string(index=False))
    if args.out:
        frame.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
