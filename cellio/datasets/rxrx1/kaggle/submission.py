"""Submissions: check a CSV the way Kaggle will read it, then upload it."""
from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ....errors import DownloadError, MetadataError
from ..layout import KAGGLE_SLUG, N_TREATMENTS
from .api import call_api, make_api
from .credentials import check_credentials

__all__ = ["SubmissionReport", "validate_submission", "submit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubmissionReport:
    path: Path | None             # None for a DataFrame
    rows: int
    checked_against: Path | None  # the CSV whose id_codes the submission was matched against, if any
    labels: str = f"in 0..{N_TREATMENTS - 1}"
    ordered: bool = False         # the rows were also checked to follow checked_against's order

    def summary(self) -> str:
        order = " in its order" if self.ordered else ""
        against = f"matches every id_code of {self.checked_against}{order}" if self.checked_against else \
            "id_codes not checked against the test set (no sample_submission.csv/test.csv found)"
        return (f"{self.path if self.path is not None else 'submission'}: {self.rows} rows, header id_code,sirna, "
                f"sirna {self.labels}; {against}")


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, fields)]) of a CSV, blank lines left out."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        return header, [(line, row) for line, row in enumerate(reader, start=2) if row]


def _frame_rows(frame: Any) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and rows a DataFrame has as a CSV (`frame.to_csv(index=False)`): every value as its text."""
    header = [str(c) for c in frame.columns]
    return header, [(line, [str(v) for v in row])
                    for line, row in enumerate(frame.itertuples(index=False, name=None), start=2)]


def _read_id_codes(path: Path) -> list[str]:
    header, rows = _read_rows(path)
    if "id_code" not in header:
        raise MetadataError(f"{path}: expected an 'id_code' column, found columns {header}")
    col = header.index("id_code")
    return [row[col] for _, row in rows]


def _examples(items: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def validate_submission(submission: str | os.PathLike[str] | Any, sample_submission: str | Path | None = None, *,
                        allowed: Collection[int] | None = None, ordered: bool = False,
                        require_test_ids: bool = False) -> SubmissionReport:
    """Check a submission the way Kaggle reads it: a CSV file, or a pandas DataFrame before it is written as one.

    Header exactly `id_code,sirna`; every sirna an integer (ASCII digits) in 0..1107, and in `allowed` when given;
    no id_code twice; and, when the test id_codes are known (`sample_submission`, else for a file
    sample_submission.csv or test.csv beside it), every one present and no other, and with `ordered=True` in the
    sample's row order. Raises MetadataError listing each problem with the CSV line numbers (for a DataFrame, those
    of the CSV `to_csv(index=False)` writes). Without the test id_codes the file's own rows are checked and a
    warning says so; with `require_test_ids` (what `cellio submit` uses) that is an error instead: a file missing
    test wells would otherwise pass.
    """
    if isinstance(submission, (str, os.PathLike)):
        path: Path | None = Path(submission)
        if not path.is_file():
            raise MetadataError(f"submission file {path} does not exist")
        header, rows = _read_rows(path)
        name = str(path)
    else:
        path = None
        header, rows = _frame_rows(submission)
        name = "(DataFrame)"
    if header != ["id_code", "sirna"]:
        raise MetadataError(f"{name}: header must be exactly 'id_code,sirna', found {','.join(header)!r}")
    labels = set(int(a) for a in allowed) if allowed is not None else None
    ids: list[str] = []
    lines: list[int] = []
    bad_shape: list[str] = []
    bad_sirna: list[str] = []
    for line, row in rows:
        if len(row) != 2:
            bad_shape.append(f"line {line} has {len(row)} fields")
            continue
        id_code, sirna = row[0].strip(), row[1].strip()
        ids.append(id_code)
        lines.append(line)
        integer = re.fullmatch(r"[0-9]+", sirna) is not None  # not \d: Kaggle reads ASCII digits only
        if not integer or int(sirna) >= N_TREATMENTS or (labels is not None and int(sirna) not in labels):
            bad_sirna.append(f"line {line} {id_code}: {sirna!r}")
    expect = f"in 0..{N_TREATMENTS - 1}" + (f" and one of the {len(labels)} allowed treatment classes"
                                            if labels is not None else "")
    problems: list[str] = []
    if not ids and not bad_shape:
        problems.append("no rows")
    if bad_shape:
        problems.append(f"rows need exactly 2 fields: {_examples(bad_shape)}")
    if bad_sirna:
        problems.append(f"sirna must be an integer {expect}: {_examples(bad_sirna)}")
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        problems.append(f"id_codes listed more than once: {_examples(dupes)}")

    reference: Path | None = Path(sample_submission) if sample_submission is not None else None
    if reference is None and path is not None:
        reference = next((p for p in (path.parent / "sample_submission.csv", path.parent / "test.csv")
                          if p.is_file() and p.resolve() != path.resolve()), None)
    if reference is not None:
        if not reference.is_file():
            raise MetadataError(f"sample submission {reference} does not exist")
        expected = _read_id_codes(reference)
        seen = set(ids)
        missing = [i for i in expected if i not in seen]
        unknown = sorted(seen - set(expected))
        if missing:
            problems.append(f"{len(missing)} test id_codes of {reference.name} are missing: {_examples(missing)}")
        if unknown:
            problems.append(f"{len(unknown)} id_codes are not test wells of {reference.name}: "
                            f"{_examples(unknown)}")
        if ordered and not (missing or unknown or dupes) and ids != expected:
            k = next(k for k, (a, b) in enumerate(zip(ids, expected)) if a != b)
            problems.append(f"rows must follow the order of {reference.name}: line {lines[k]} has {ids[k]!r}, "
                            f"{reference.name} has {expected[k]!r} there")
    elif require_test_ids:
        raise MetadataError(f"submission {name}: the test id_codes to check it against are unknown (no "
                            f"sample_submission.csv or test.csv {'beside it' if path is not None else 'given'}), so "
                            f"missing test wells would go unnoticed; pass --sample-submission PATH (Kaggle's "
                            f"sample_submission.csv or test.csv; sample_submission= in Python)")
    else:
        log.warning("%s: no sample_submission.csv or test.csv %s; id_codes not checked against the test set (pass "
                    "sample_submission=...)", name, "beside it" if path is not None else "given")
    if problems:
        raise MetadataError(f"submission {name} is invalid: " + "; ".join(problems))
    return SubmissionReport(path, len(ids), reference, expect, ordered and reference is not None)


def submit(file: str | Path, message: str, *, check: bool = True, sample_submission: str | Path | None = None,
           progress: bool = True, api: Any | None = None) -> str:
    """Validate `file` (unless check=False) and submit it to the competition; returns Kaggle's answer.

    The test id_codes must be known to validate: `sample_submission` (Kaggle's sample_submission.csv or test.csv),
    else such a file beside `file`; without them nothing is uploaded. `validate_submission(file, sample,
    require_test_ids=True)` (`cellio submit FILE --check`) runs the same check without credentials."""
    file = Path(file)
    if not message or not message.strip():
        raise MetadataError("a submission needs a non-empty message (-m)")
    source = check_credentials()
    if check:
        log.info("%s", validate_submission(file, sample_submission, require_test_ids=True).summary())
    elif not file.is_file():
        raise MetadataError(f"submission file {file} does not exist")
    if api is None:
        api = make_api()
    log.info("Submitting %s to %s as %s", file, KAGGLE_SLUG, source.describe())
    response = call_api(f"submitting {file.name}", api.competition_submit, str(file), message, KAGGLE_SLUG,
                        quiet=not progress)
    answer = str(getattr(response, "message", "") or "")
    if answer == getattr(api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", "Could not submit to competition"):
        raise DownloadError(f"uploading {file} to Kaggle failed ({answer}); check the network and retry")
    return answer or "submitted"
