"""Submissions: check a CSV the way Kaggle will read it, then upload it."""
from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DownloadError, MetadataError
from ..schema import KAGGLE_SLUG, N_TREATMENTS
from .api import call_api, make_api
from .credentials import check_credentials

__all__ = ["SubmissionReport", "validate_submission", "submit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubmissionReport:
    path: Path
    rows: int
    checked_against: Path | None  # the CSV whose id_codes the submission was matched against, if any

    def summary(self) -> str:
        against = f"matches every id_code of {self.checked_against}" if self.checked_against else \
            "id_codes not checked against the test set (no sample_submission.csv/test.csv found)"
        return f"{self.path}: {self.rows} rows, header id_code,sirna, sirna in 0..{N_TREATMENTS - 1}; {against}"


def _read_id_codes(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        if "id_code" not in header:
            raise MetadataError(f"{path}: expected an 'id_code' column, found columns {header}")
        col = header.index("id_code")
        return [row[col] for row in reader if row]


def _examples(items: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def validate_submission(path: str | Path, sample_submission: str | Path | None = None) -> SubmissionReport:
    """Check a submission CSV before uploading it.

    Header exactly `id_code,sirna`; every sirna an integer in 0..1107; no id_code twice; and, when the test
    id_codes are known (`sample_submission`, else sample_submission.csv or test.csv beside the file), every
    one present and no other. Raises MetadataError listing each problem with line numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"submission file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if header != ["id_code", "sirna"]:
            raise MetadataError(f"{path}: header must be exactly 'id_code,sirna', found {','.join(header)!r}")
        ids: list[str] = []
        bad_shape: list[str] = []
        bad_sirna: list[str] = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2:
                bad_shape.append(f"line {line} has {len(row)} fields")
                continue
            id_code, sirna = row[0].strip(), row[1].strip()
            ids.append(id_code)
            if not re.fullmatch(r"\d+", sirna) or int(sirna) >= N_TREATMENTS:
                bad_sirna.append(f"line {line} {id_code}: {sirna!r}")
    problems: list[str] = []
    if not ids and not bad_shape:
        problems.append("no rows")
    if bad_shape:
        problems.append(f"rows need exactly 2 fields: {_examples(bad_shape)}")
    if bad_sirna:
        problems.append(f"sirna must be an integer in 0..{N_TREATMENTS - 1}: {_examples(bad_sirna)}")
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        problems.append(f"id_codes listed more than once: {_examples(dupes)}")

    reference: Path | None = Path(sample_submission) if sample_submission is not None else None
    if reference is None:
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
    else:
        log.warning("%s: no sample_submission.csv or test.csv beside it; id_codes not checked against the test "
                    "set (pass sample_submission=...)", path)
    if problems:
        raise MetadataError(f"submission {path} is invalid: " + "; ".join(problems))
    return SubmissionReport(path, len(ids), reference)


def submit(file: str | Path, message: str, *, check: bool = True, sample_submission: str | Path | None = None,
           progress: bool = True, api: Any | None = None) -> str:
    """Validate `file` (unless check=False) and submit it to the competition; returns Kaggle's answer."""
    file = Path(file)
    source = check_credentials()
    if not message or not message.strip():
        raise MetadataError("a submission needs a non-empty message (-m)")
    if check:
        log.info("%s", validate_submission(file, sample_submission).summary())
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
