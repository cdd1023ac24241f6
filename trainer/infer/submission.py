"""submission.csv in Kaggle's format: `id_code,sirna`, every id of sample_submission.csv once, in its order.

Kaggle's sample submission lists the 19,897 test treatment wells (test.csv); control wells are not scored. The frame
is checked by `cellio.validate_submission` (the same check `cellio submit` runs before uploading, here also
requiring the sample's row order) before it is written, and the file is atomically moved into place, so a
half-written or invalid file never sits at `out_path`.

    python -m trainer.infer.submission --predictions assigned.csv --sample data/sample_submission.csv \
        --out submission.csv
    cellio submit submission.csv -m "densenet + plate assignment"
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cellio import validate_submission
from cellio.errors import MetadataError

from trainer.training.disk import replaced_atomically

__all__ = ["read_sample_submission", "write_submission", "main"]

log = logging.getLogger(__name__)

COLUMNS = ("id_code", "sirna")


def read_sample_submission(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"sample submission {path} does not exist (it comes with the Kaggle download)")
    frame = pd.read_csv(path)
    if tuple(frame.columns) != COLUMNS:
        raise MetadataError(f"{path}: expected columns {list(COLUMNS)}, found {list(frame.columns)}")
    dup = frame["id_code"].duplicated()
    if dup.any():
        raise MetadataError(f"{path}: id_code {frame['id_code'][dup].iloc[0]!r} appears more than once")
    return frame


def _as_series(predictions: pd.DataFrame | Mapping[str, int] | pd.Series) -> pd.Series:
    if isinstance(predictions, pd.DataFrame):
        if not set(COLUMNS) <= set(predictions.columns):
            raise MetadataError(f"predictions need columns {list(COLUMNS)}, found {list(predictions.columns)}")
        if predictions["id_code"].duplicated().any():
            raise MetadataError(f"predictions list id_code "
                                f"{predictions['id_code'][predictions['id_code'].duplicated()].iloc[0]!r} twice")
        return pd.Series(predictions["sirna"].to_numpy(), index=predictions["id_code"].to_numpy())
    return pd.Series(predictions)


def write_submission(well_predictions: pd.DataFrame | Mapping[str, int] | pd.Series, sites: pd.DataFrame | None,
                     sample_submission_path: str | Path, out_path: str | Path, *,
                     treatments: Sequence[int] | None = None) -> pd.DataFrame:
    """Write `out_path` with one row per sample_submission id_code (its order) and return the frame.

    `well_predictions` maps id_code -> sirna (a DataFrame with those columns, e.g. `Assignment.predictions`).
    `sites` (optional) is used to refuse predictions for wells the data set does not have as test wells;
    `treatments` (optional) the allowed label set.
    """
    sample = read_sample_submission(sample_submission_path)
    pred = _as_series(well_predictions)
    missing = ~sample["id_code"].isin(pred.index)
    if missing.any():
        raise MetadataError(f"no prediction for {int(missing.sum())} sample_submission wells, e.g. "
                            f"{sample['id_code'][missing].iloc[0]!r}; predict every test well")
    if sites is not None:
        test_ids = set(sites.loc[sites["dataset"] == "test", "id_code"])
        unknown = ~sample["id_code"].isin(test_ids)
        if unknown.any():
            raise MetadataError(f"sample_submission id {sample['id_code'][unknown].iloc[0]!r} is not a test well "
                                f"of the site table; is it the same data set?")
    frame = pd.DataFrame({"id_code": sample["id_code"].to_numpy(),
                          "sirna": pred.loc[sample["id_code"]].to_numpy().astype(np.int64)})
    validate_submission(frame, sample_submission_path, allowed=treatments, ordered=True)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(out_path) as tmp:
        frame.to_csv(tmp, index=False)
    log.info("wrote %s (%d wells)", out_path, len(frame))
    return frame


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.infer.submission", description=__doc__.split("\n\n")[0])
    p.add_argument("--predictions", required=True, help="CSV id_code,sirna (e.g. from trainer.infer.assign)")
    p.add_argument("--sample", required=True, help="sample_submission.csv of the data set")
    p.add_argument("--out", default="submission.csv")
    args = p.parse_args(argv)
    frame = write_submission(pd.read_csv(args.predictions), None, args.sample, args.out)
    print(f"wrote {args.out}: {len(frame)} wells. Submit with: cellio submit {args.out} -m MESSAGE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
