"""The downloaded competition on disk: unzip into the Kaggle layout, then verify every site's image files."""
from __future__ import annotations

import logging
import os
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ....errors import CellioError, DownloadError
from ..layout import DATASETS, KAGGLE_SLUG, PATH_COLUMNS, parse_experiment
from .manifest import Manifest

__all__ = ["UnzipReport", "VerifyReport", "unzip_dataset", "verify_dataset", "extract_member"]

log = logging.getLogger(__name__)

_GB = 1e9


@dataclass(frozen=True)
class UnzipReport:
    zips: tuple[str, ...]
    extracted: int
    skipped: int
    bytes_written: int

    def summary(self) -> str:
        return (f"unzipped {', '.join(self.zips) or 'nothing'}: {self.extracted} files extracted "
                f"({self.bytes_written / _GB:.2f} GB), {self.skipped} already in place")


@dataclass(frozen=True)
class VerifyReport:
    root: Path
    sites: int
    files: int
    sites_per_dataset: dict[str, int]

    def summary(self) -> str:
        per = ", ".join(f"{k} {v}" for k, v in self.sites_per_dataset.items())
        return f"verified {self.root}: {self.sites} sites ({per}), all {self.files} image files present"


def _is_experiment(name: str) -> bool:
    try:
        parse_experiment(name)
    except ValueError:
        return False
    return True


def _member_target(zip_path: Path, member: str) -> str | None:
    """Relative destination of a zip member in the Kaggle layout, or None for entries to skip.

    train.zip may hold `train/HUVEC-01/Plate1/...` or start at `HUVEC-01/Plate1/...`; both land in
    `train/HUVEC-01/Plate1/...`. Anything else (CSV members, a bundle's top level) keeps its path.
    """
    name = member.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if not parts or name.endswith("/") or parts[0] == "__MACOSX" or parts[-1] == ".DS_Store":
        return None
    if name.startswith("/") or ".." in parts or re.match(r"^[A-Za-z]:", name):
        raise DownloadError(f"{zip_path}: member {member!r} would be written outside the data set root; "
                            "refusing to extract this archive")
    dataset = zip_path.name[: -len(".zip")] if zip_path.name.endswith(".zip") else zip_path.stem
    if parts[0] not in DATASETS and dataset in DATASETS and _is_experiment(parts[0]):
        return f"{dataset}/{name}"
    return name


def extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                   on_bytes: Callable[[int], Any] | None = None, made_dirs: set[str] | None = None) -> None:
    """Stream one member to TARGET.part and rename it; zipfile checks the CRC when the stream ends.

    `made_dirs` remembers directories already created: ~750k images land in ~200 plate folders, and a
    mkdir per file costs more than the small write.
    """
    folder = str(target.parent)
    if made_dirs is None or folder not in made_dirs:
        os.makedirs(folder, exist_ok=True)
        if made_dirs is not None:
            made_dirs.add(folder)
    part = folder + os.sep + target.name + ".part"
    with zf.open(info) as src, open(part, "wb") as out:
        while chunk := src.read(1 << 22):
            out.write(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    os.replace(part, target)


def _discover_zips(dest: Path) -> list[Path]:
    names = [f"{KAGGLE_SLUG}.zip", "train.zip", "test.zip"]
    found = [dest / n for n in names if (dest / n).is_file()]
    found += sorted(p for p in dest.glob("*.csv.zip") if p.is_file())
    return found


def unzip_dataset(dest: str | Path, zips: Sequence[str | Path] | None = None,
                  progress: bool = True) -> UnzipReport:
    """Extract the competition zips in `dest` into the Kaggle layout (train/, test/ trees and the CSVs).

    Idempotent and resumable: a member already extracted with the right size is skipped, and each member is
    written to NAME.part and renamed, so an interrupted run leaves no truncated image behind. `zips` defaults
    to the bundle, train.zip, test.zip and *.csv.zip found in `dest`; zips found inside the bundle are
    extracted too.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    queue = [Path(z) if Path(z).is_absolute() or not (dest / z).exists() else dest / z
             for z in (zips if zips is not None else _discover_zips(dest))]
    manifest = Manifest.load(dest)
    done: list[str] = []
    extracted = skipped = written = 0
    while queue:
        zip_path = queue.pop(0)
        if zip_path.name in done:
            continue
        if not zip_path.is_file():
            raise DownloadError(f"cannot unzip {zip_path}: the file does not exist; run `cellio download` first")
        try:
            zf = zipfile.ZipFile(zip_path)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{zip_path} is not a complete zip archive ({exc}); delete it and rerun "
                                "`cellio download` to fetch it again") from exc
        with zf:
            work: list[tuple[zipfile.ZipInfo, Path]] = []
            for info in zf.infolist():
                rel = _member_target(zip_path, info.filename)
                if rel is None:
                    continue
                target = dest / rel
                if target.is_file() and target.stat().st_size == info.file_size:
                    skipped += 1
                else:
                    work.append((info, target))
            total = sum(info.file_size for info, _ in work)
            log.info("%s: %d members to extract (%.2f GB)", zip_path.name, len(work), total / _GB)
            made_dirs: set[str] = set()
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"unzip {zip_path.name}",
                      disable=not progress or not work) as bar:
                for info, target in work:
                    try:
                        extract_member(zf, info, target, bar.update, made_dirs)
                    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                        raise DownloadError(f"{zip_path}: member {info.filename} is corrupt ({exc}); delete the "
                                            "zip and rerun `cellio download`") from exc
                    extracted += 1
                    written += info.file_size
            members = len(zf.infolist())
            nested = [dest / _member_target(zip_path, i.filename) for i in zf.infolist()
                      if i.filename.endswith(".zip") and _member_target(zip_path, i.filename)]
        manifest.mark_extracted(zip_path, members)
        done.append(zip_path.name)
        queue += [n for n in nested if n.parent == dest]
    return UnzipReport(tuple(done), extracted, skipped, written)


def _missing_files(root: Path, rel_paths: Iterable[str]) -> list[str]:
    """The relative paths that do not exist: one directory listing per plate folder, not one stat per file."""
    listed: dict[str, set[str]] = {}
    missing = []
    for rel in rel_paths:
        folder, _, name = rel.rpartition("/")
        if folder not in listed:
            try:
                listed[folder] = {e.name for e in os.scandir(root / folder) if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                listed[folder] = set()
        if name not in listed[folder]:
            missing.append(rel)
    return missing


def verify_dataset(dest: str | Path, datasets: Sequence[str] = DATASETS) -> VerifyReport:
    """Check that every site listed in the CSVs under `dest` has its six image files.

    Uses `read_metadata(dest, check_files=True)`; `datasets` limits the check to "train" or "test" (after
    downloading only one of the image zips). Raises DownloadError naming how many files are missing, how many
    per experiment, and the first few paths.
    """
    from ..metadata import read_metadata

    dest = Path(dest)
    whole = set(datasets) >= set(DATASETS)
    try:
        sites = read_metadata(dest, check_files=whole)
        failure = None
    except CellioError as exc:
        failure = exc
        try:  # re-read without the file check, to say exactly which files are missing where
            sites = read_metadata(dest, check_files=False)
        except CellioError as exc2:
            raise DownloadError(f"cannot verify {dest}: {exc2}") from exc2
    sites = sites[sites["dataset"].isin(list(datasets))]
    experiment_of = {rel: exp for exp, *paths in sites[["experiment", *PATH_COLUMNS]].itertuples(index=False)
                     for rel in paths}
    missing = _missing_files(dest, experiment_of)
    if missing:
        per_experiment = Counter(experiment_of[rel] for rel in missing)
        where = ", ".join(f"{exp}: {n}" for exp, n in sorted(per_experiment.items())[:12])
        first = "\n  ".join(missing[:10])
        raise DownloadError(
            f"{dest}: {len(missing)} of {len(experiment_of)} image files listed in the CSVs are missing "
            f"({where}{', ...' if len(per_experiment) > 12 else ''}). First missing:\n  {first}\n"
            "Rerun `cellio download` (it resumes), or unzip again with cellio.datasets.rxrx1.kaggle.unzip_dataset"
        )
    if failure is not None:
        raise DownloadError(f"verification of {dest} failed: {failure}") from failure
    per_dataset = {str(k): int(v) for k, v in sites["dataset"].value_counts().sort_index().items()}
    report = VerifyReport(dest, len(sites), len(experiment_of), per_dataset)
    log.info("%s", report.summary())
    return report
