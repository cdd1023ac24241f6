"""cellio.datasets.rxrx1.kaggle, offline: credential detection, disk check, resumable download (fake API), unzip,
verify, submit.

HOME and every KAGGLE_* variable point into tmp_path; nothing here imports kaggle or touches the network.
"""
from __future__ import annotations

import logging
import os
import shutil
import zipfile
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest

from cellio.errors import CredentialsError, DownloadError, MetadataError
from cellio.datasets.rxrx1.kaggle import (MANIFEST_NAME, PART_DIR, CredentialKind, check_credentials, download, submit,
                           unzip_dataset, validate_submission, verify_dataset)
from cellio.schema import KAGGLE_SLUG

SECRET = "s3cr3t-0123456789abcdef"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME with no Kaggle variables: no credentials at all."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in list(os.environ):
        if name.startswith("KAGGLE_"):
            monkeypatch.delenv(name)
    return home


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _json(username: str = "alice", key: str = SECRET) -> str:
    return f'{{"username": "{username}", "key": "{key}"}}'


# ---------------------------------------------------------------------------------------------- credentials


def test_missing_credentials_lists_every_form(home):
    with pytest.raises(CredentialsError) as err:
        check_credentials()
    msg = str(err.value)
    for form in ("kaggle auth login", "KAGGLE_API_TOKEN", "~/.kaggle/access_token", "kaggle.json",
                 "KAGGLE_CONFIG_DIR", "KAGGLE_USERNAME", "KAGGLE_KEY", "https://www.kaggle.com/settings/api",
                 f"{KAGGLE_SLUG}/rules"):
        assert form in msg, form


@pytest.mark.parametrize("form", ["env_token", "env_token_file", "token_file", "token_txt", "kaggle_json",
                                  "config_dir", "xdg", "env_key", "oauth"])
def test_every_credential_form_is_detected(home, monkeypatch, form, caplog):
    caplog.set_level(logging.DEBUG)
    kind, username = {
        "env_token": (CredentialKind.ENV_TOKEN, None), "env_token_file": (CredentialKind.ENV_TOKEN, None),
        "token_file": (CredentialKind.TOKEN_FILE, None), "token_txt": (CredentialKind.TOKEN_FILE, None),
        "kaggle_json": (CredentialKind.KAGGLE_JSON, "alice"), "config_dir": (CredentialKind.KAGGLE_JSON, "alice"),
        "xdg": (CredentialKind.KAGGLE_JSON, "alice"), "env_key": (CredentialKind.ENV_KEY, "bob"),
        "oauth": (CredentialKind.OAUTH, "carol"),
    }[form]
    where = None
    if form == "env_token":
        monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    elif form == "env_token_file":
        where = _write(home / "tok", SECRET)
        monkeypatch.setenv("KAGGLE_API_TOKEN", str(where))
    elif form == "token_file":
        where = _write(home / ".kaggle" / "access_token", SECRET + "\n")
    elif form == "token_txt":
        where = _write(home / ".kaggle" / "access_token.txt", SECRET)
    elif form == "kaggle_json":
        where = _write(home / ".kaggle" / "kaggle.json", _json())
    elif form == "config_dir":
        where = _write(home / "cfg" / "kaggle.json", _json())
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / "cfg"))
    elif form == "xdg":  # no ~/.kaggle on Linux: kaggle looks in $XDG_CONFIG_HOME/kaggle
        where = _write(home / ".config" / "kaggle" / "kaggle.json", _json())
    elif form == "env_key":
        monkeypatch.setenv("KAGGLE_USERNAME", "bob")
        monkeypatch.setenv("KAGGLE_KEY", SECRET)
    elif form == "oauth":
        where = _write(home / ".kaggle" / "credentials.json",
                       f'{{"refresh_token": "{SECRET}", "access_token": "", "username": "carol"}}')
    source = check_credentials()
    assert source.kind is kind
    assert source.username == username
    if where is not None:
        assert str(where) in source.location
    assert SECRET not in repr(source) and SECRET not in source.describe()
    assert SECRET not in caplog.text


def test_token_wins_over_legacy_key_like_kaggle(home, monkeypatch):
    _write(home / ".kaggle" / "kaggle.json", _json())
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)
    assert check_credentials().kind is CredentialKind.ENV_TOKEN


@pytest.mark.parametrize("name", ["access_token", "kaggle.json", "credentials.json"])
@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_credentials_file_readable_by_others_is_refused(home, name, mode, caplog):
    body = {"access_token": SECRET, "kaggle.json": _json(),
            "credentials.json": f'{{"refresh_token": "{SECRET}"}}'}[name]
    path = _write(home / ".kaggle" / name, body, mode)
    with pytest.raises(CredentialsError) as err:
        check_credentials()
    msg = str(err.value)
    assert f"chmod 600 {path}" in msg
    assert ("others" if mode & 0o004 else "group") in msg
    assert SECRET not in msg and SECRET not in caplog.text


@pytest.mark.parametrize("body, expect", [
    ('{"username": "alice", "key": ', "not valid JSON"),
    ('{"username": "alice"}', "lacks 'key'"),
    (f'{{"key": "{SECRET}"}}', "lacks 'username'"),
    ('["alice"]', "JSON object"),
])
def test_malformed_kaggle_json(home, body, expect):
    path = _write(home / ".kaggle" / "kaggle.json", body)
    with pytest.raises(CredentialsError) as err:
        check_credentials()
    assert str(path) in str(err.value) and expect in str(err.value)
    assert SECRET not in str(err.value)


def test_half_set_environment_is_named(home, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "bob")
    with pytest.raises(CredentialsError, match="KAGGLE_USERNAME is set but KAGGLE_KEY is not"):
        check_credentials()


def test_cli_without_credentials_exits_2_with_the_forms(home, tmp_path, capsys):
    from cellio.cli import main

    assert main(["download", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "cellio download: error:" in err and "kaggle auth login" in err
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------------------------- download


class FakeApi:
    """The two KaggleApi methods download() uses, serving in-memory files; `fail_on` simulates a killed run."""

    def __init__(self, files: dict[str, bytes], fail_on: str | None = None, wrapped: tuple[str, ...] = (),
                 bundle: bytes | None = None):
        self.files = files
        self.fail_on = fail_on
        self.wrapped = wrapped  # served as NAME.zip, as Kaggle does for large single files
        self.bundle = bundle    # the whole competition as one zip
        self.calls: list[str] = []

    def competition_list_files(self, competition, page_token=None, page_size=20):
        assert competition == KAGGLE_SLUG
        self.calls.append("list")
        listed = [SimpleNamespace(name=n, total_bytes=len(b)) for n, b in self.files.items()]
        return SimpleNamespace(files=listed, next_page_token="")

    def competition_download_file(self, competition, file_name, path=None, force=False, quiet=False):
        self.calls.append(file_name)
        data = self.files[file_name]
        out = Path(path) / file_name
        if file_name == self.fail_on:
            out.write_bytes(data[: len(data) // 2])  # a partial file, then the connection drops
            raise ConnectionError("connection reset by peer")
        if file_name in self.wrapped:
            with zipfile.ZipFile(out.with_name(file_name + ".zip"), "w") as zf:
                zf.writestr(file_name, data)
        else:
            out.write_bytes(data)

    def competition_download_files(self, competition, path=None, force=False, quiet=True):
        self.calls.append("bundle")
        (Path(path) / f"{competition}.zip").write_bytes(self.bundle)


@pytest.fixture
def token(home, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", SECRET)


def _fetch(dest, api, **kw):
    return download(dest, api=api, unzip=False, verify=False, progress=False, check_disk=False, **kw)


def test_download_is_resumable_and_never_leaves_partial_files(token, tmp_path):
    files = {"train.csv": b"a" * 100, "test.csv": b"b" * 50, "sample_submission.csv": b"c" * 30}
    dest = tmp_path / "data"
    api = FakeApi(files, fail_on="test.csv")
    with pytest.raises(DownloadError, match="downloading test.csv: could not reach Kaggle"):
        _fetch(dest, api)
    assert (dest / "train.csv").read_bytes() == files["train.csv"]
    assert not (dest / "test.csv").exists()  # the partial stays in the staging directory only
    assert (dest / PART_DIR / "test.csv").stat().st_size == 25

    api = FakeApi(files)
    report = _fetch(dest, api)
    assert report.downloaded == ("test.csv", "sample_submission.csv")
    assert report.skipped == ("train.csv",)
    assert all((dest / n).read_bytes() == b for n, b in files.items())
    assert not (dest / PART_DIR).exists()
    assert (dest / MANIFEST_NAME).is_file()

    api = FakeApi(files)
    assert _fetch(dest, api).downloaded == ()
    assert api.calls == ["list"]
    # A file truncated behind our back (size no longer what the manifest recorded) is fetched again.
    (dest / "train.csv").write_bytes(b"a" * 10)
    assert _fetch(dest, FakeApi(files)).downloaded == ("train.csv",)
    assert _fetch(dest, FakeApi(files), force=True).downloaded == tuple(files)


def test_download_subset_and_unknown_file(token, tmp_path):
    files = {"train.csv": b"a" * 10, "test.csv": b"b" * 10, "train.zip": b"z" * 99}
    api = FakeApi(files)
    assert _fetch(tmp_path / "d", api, files=["train.csv", "test.csv"]).downloaded == ("train.csv", "test.csv")
    assert not (tmp_path / "d" / "train.zip").exists()
    with pytest.raises(DownloadError, match="--files nope.csv: not a file of"):
        _fetch(tmp_path / "d", FakeApi(files), files=["nope.csv"])


def test_file_served_zipped_is_unwrapped(token, tmp_path):
    files = {"pixel_stats.csv": b"id_code,site\n" * 50, "pixel_stats.csv.zip": b"zipped copy"}
    report = _fetch(tmp_path / "d", FakeApi(files, wrapped=("pixel_stats.csv",)))
    assert report.downloaded == ("pixel_stats.csv",)  # the listed .zip twin is not fetched as well
    assert (tmp_path / "d" / "pixel_stats.csv").read_bytes() == files["pixel_stats.csv"]
    assert not (tmp_path / "d" / "pixel_stats.csv.zip").exists()


def test_file_of_the_listed_size_is_adopted(token, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "train.csv").write_bytes(b"a" * 10)  # e.g. fetched earlier with the kaggle CLI
    api = FakeApi({"train.csv": b"a" * 10, "test.csv": b"b" * 5})
    assert _fetch(dest, api).downloaded == ("test.csv",)


DiskUsage = namedtuple("DiskUsage", "total used free")


def test_disk_space_is_checked_before_any_network_call(token, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(100 * 10**9, 90 * 10**9, 10 * 10**9))
    api = FakeApi({"train.zip": b"z"})
    dest = tmp_path / "not" / "yet"
    with pytest.raises(DownloadError) as err:
        download(dest, api=api, progress=False)
    msg = str(err.value)
    assert f"on {tmp_path}" in msg and "10.0 GB free" in msg and "need 9" in msg and "--skip-disk-check" in msg
    assert api.calls == []  # refused before listing anything
    # CSVs alone fit; the exact check after listing uses Kaggle's sizes.
    assert download(dest, api=FakeApi({"train.csv": b"x" * 10}), files=["train.csv"], verify=False,
                    progress=False).downloaded == ("train.csv",)


# ---------------------------------------------------------------------------------------------- unzip + verify


def _zip_tree(raw: Path, dataset: str, out: Path, prefixed: bool) -> Path:
    """train.zip as Kaggle might ship it: members `train/EXP/...` (prefixed) or `EXP/...`."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted((raw / dataset).rglob("*.png")):
            rel = path.relative_to(raw if prefixed else raw / dataset).as_posix()
            zf.write(path, rel)
    return out


@pytest.fixture
def zipped(tiny_raw, tmp_path):
    """A download directory: the CSVs plus train.zip (prefixed members) and test.zip (members at EXP/...)."""
    dest = tmp_path / "dl"
    dest.mkdir()
    for csv_path in tiny_raw.glob("*.csv"):
        shutil.copy(csv_path, dest / csv_path.name)
    _zip_tree(tiny_raw, "train", dest / "train.zip", prefixed=True)
    _zip_tree(tiny_raw, "test", dest / "test.zip", prefixed=False)
    return dest


def test_unzip_both_member_styles_resumable_then_verify(zipped, tiny_raw):
    first = unzip_dataset(zipped, progress=False)
    assert first.zips == ("train.zip", "test.zip") and first.skipped == 0
    expected = sorted(p.relative_to(tiny_raw).as_posix() for p in tiny_raw.rglob("*.png"))
    got = sorted(p.relative_to(zipped).as_posix() for p in zipped.rglob("*.png"))
    assert got == expected and first.extracted == len(expected)
    assert not list(zipped.rglob("*.part"))
    some = expected[len(expected) // 2]
    assert (zipped / some).read_bytes() == (tiny_raw / some).read_bytes()

    second = unzip_dataset(zipped, progress=False)
    assert second.extracted == 0 and second.skipped == len(expected)

    report = verify_dataset(zipped)
    assert report.files == len(expected) and set(report.sites_per_dataset) == {"train", "test"}

    # A lost image is named precisely; a truncated one is re-extracted by the next unzip.
    (zipped / some).unlink()
    with pytest.raises(DownloadError) as err:
        verify_dataset(zipped)
    assert "1 of" in str(err.value) and some in str(err.value) and some.split("/")[1] in str(err.value)
    other = expected[0]
    (zipped / other).write_bytes(b"\x89PNG")
    again = unzip_dataset(zipped, progress=False)
    assert again.extracted == 2
    assert (zipped / other).read_bytes() == (tiny_raw / other).read_bytes()
    verify_dataset(zipped)


def test_download_then_unzip_and_verify_with_fake_api(token, zipped, tmp_path):
    files = {p.name: p.read_bytes() for p in sorted(zipped.iterdir()) if p.is_file()}
    report = download(tmp_path / "fresh", api=FakeApi(files), check_disk=False, progress=False)
    assert set(report.downloaded) == set(files)
    assert report.unzip is not None and report.unzip.extracted > 0
    assert report.verify is not None and report.verify.sites > 0
    assert "verified" in report.summary()


def test_corrupt_and_hostile_zips_are_refused(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "train.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DownloadError, match="not a complete zip archive"):
        unzip_dataset(dest, progress=False)
    with zipfile.ZipFile(dest / "train.zip", "w") as zf:
        zf.writestr("../evil.png", b"x")
    with pytest.raises(DownloadError, match="outside the data set root"):
        unzip_dataset(dest, progress=False)
    assert not (tmp_path / "evil.png").exists()


# ---------------------------------------------------------------------------------------------- submissions


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample_submission.csv"
    path.write_text("id_code,sirna\nHUVEC-17_1_B03,1\nHUVEC-17_1_B04,1\nRPE-08_2_C05,1\n")
    return path


def _submission(tmp_path, rows: str, header: str = "id_code,sirna") -> Path:
    path = tmp_path / "sub" / "submission.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text(header + "\n" + rows)
    return path


def test_valid_submission(tmp_path, sample):
    sub = _submission(tmp_path, "HUVEC-17_1_B03,0\nRPE-08_2_C05,1107\nHUVEC-17_1_B04,17\n")
    report = validate_submission(sub, sample)
    assert report.rows == 3 and report.checked_against == sample


@pytest.mark.parametrize("rows, header, expect", [
    ("HUVEC-17_1_B03,0\nRPE-08_2_C05,1\n", "id_code,sirna", "1 test id_codes of sample_submission.csv are "
                                                           "missing: HUVEC-17_1_B04"),
    ("HUVEC-17_1_B03,0\nHUVEC-17_1_B03,0\nHUVEC-17_1_B04,1\nRPE-08_2_C05,1\n", "id_code,sirna",
     "more than once: HUVEC-17_1_B03"),
    ("HUVEC-17_1_B03,0\nHUVEC-17_1_B04,1\nRPE-08_2_C05,1\nHEPG2-01_1_B03,1\n", "id_code,sirna",
     "not test wells of sample_submission.csv: HEPG2-01_1_B03"),
    ("HUVEC-17_1_B03,1108\nHUVEC-17_1_B04,-1\nRPE-08_2_C05,3.0\n", "id_code,sirna",
     "line 2 HUVEC-17_1_B03: '1108', line 3 HUVEC-17_1_B04: '-1', line 4 RPE-08_2_C05: '3.0'"),
    ("HUVEC-17_1_B03,1\n", "id_code,predicted", "header must be exactly 'id_code,sirna'"),
    ("HUVEC-17_1_B03,1,2\nHUVEC-17_1_B04,1\nRPE-08_2_C05,1\n", "id_code,sirna", "line 2 has 3 fields"),
])
def test_invalid_submissions(tmp_path, sample, rows, header, expect):
    with pytest.raises(MetadataError) as err:
        validate_submission(_submission(tmp_path, rows, header), sample)
    assert expect in str(err.value)


def test_header_is_exact_and_sirna_digits_are_ascii(tmp_path, sample):
    with pytest.raises(MetadataError, match="header must be exactly 'id_code,sirna', found 'id_code, sirna'"):
        validate_submission(_submission(tmp_path, "HUVEC-17_1_B03,0\n", header="id_code, sirna"), sample)
    rows = "HUVEC-17_1_B03,\u0661\u0662\nHUVEC-17_1_B04,\uff13\nRPE-08_2_C05,1\n"  # Arabic-Indic 12, fullwidth 3
    with pytest.raises(MetadataError) as err:
        validate_submission(_submission(tmp_path, rows), sample)
    assert "line 2 HUVEC-17_1_B03: '\u0661\u0662', line 3 HUVEC-17_1_B04: '\uff13'" in str(err.value)


def test_a_dataframe_in_the_sample_order_with_allowed_labels(tmp_path, sample):
    import pandas as pd

    ids = ["HUVEC-17_1_B03", "HUVEC-17_1_B04", "RPE-08_2_C05"]
    frame = pd.DataFrame({"id_code": ids, "sirna": [3, 5, 3]})
    report = validate_submission(frame, sample, allowed=[3, 5], ordered=True)
    assert report.path is None and report.rows == 3 and report.ordered
    assert "in its order" in report.summary()
    with pytest.raises(MetadataError, match="rows must follow the order of sample_submission.csv: line 2 has "
                                            "'HUVEC-17_1_B04', sample_submission.csv has 'HUVEC-17_1_B03' there"):
        validate_submission(frame.iloc[[1, 0, 2]], sample, ordered=True)
    validate_submission(frame.iloc[[1, 0, 2]], sample)  # Kaggle itself matches rows by id_code
    with pytest.raises(MetadataError, match="one of the 2 allowed treatment classes: line 3 HUVEC-17_1_B04: '5'"):
        validate_submission(frame, sample, allowed=[3, 7])
    with pytest.raises(MetadataError, match="line 2 HUVEC-17_1_B03: '3.0'"):  # a float column is no integer id
        validate_submission(frame.astype({"sirna": float}), sample)
    with pytest.raises(MetadataError, match="header must be exactly"):
        validate_submission(frame.rename(columns={"sirna": "label"}), sample)
    with pytest.raises(MetadataError, match="1 test id_codes of sample_submission.csv are missing"):
        validate_submission(frame.iloc[:2], sample, ordered=True)


def test_test_csv_beside_the_submission_is_used(tmp_path):
    sub = _submission(tmp_path, "HUVEC-17_1_B03,5\n")
    (sub.parent / "test.csv").write_text("id_code,experiment,plate,well\nHUVEC-17_1_B03,HUVEC-17,1,B03\n"
                                         "HUVEC-17_1_B05,HUVEC-17,1,B05\n")
    with pytest.raises(MetadataError, match="missing: HUVEC-17_1_B05"):
        validate_submission(sub)


class FakeSubmitApi:
    COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE = "Could not submit to competition"

    def __init__(self):
        self.calls = []

    def competition_submit(self, file_name, message, competition, quiet=False):
        self.calls.append((Path(file_name).name, message, competition))
        return SimpleNamespace(message="Successfully submitted")


def test_submit_validates_first(token, tmp_path, sample):
    api = FakeSubmitApi()
    bad = _submission(tmp_path, "HUVEC-17_1_B03,0\n")
    with pytest.raises(MetadataError):
        submit(bad, "try", sample_submission=sample, api=api)
    assert api.calls == []
    good = _submission(tmp_path, "HUVEC-17_1_B03,0\nHUVEC-17_1_B04,1\nRPE-08_2_C05,2\n")
    assert submit(good, "densenet", sample_submission=sample, api=api) == "Successfully submitted"
    assert api.calls == [("submission.csv", "densenet", KAGGLE_SLUG)]


def test_submit_needs_credentials_before_anything(home, tmp_path, sample):
    with pytest.raises(CredentialsError):
        submit(_submission(tmp_path, "x,1\n"), "m", sample_submission=sample, api=FakeSubmitApi())


def test_images_listed_one_by_one_fall_back_to_the_bundle(token, tiny_raw, tmp_path):
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(tiny_raw.rglob("*")):
            if path.is_file() and path.suffix in (".csv", ".png"):
                zf.write(path, path.relative_to(tiny_raw).as_posix())
    listing = {p.relative_to(tiny_raw).as_posix(): b"" for p in sorted(tiny_raw.rglob("*.png"))[:3]}
    api = FakeApi(listing, bundle=bundle.read_bytes())
    report = download(tmp_path / "d", api=api, check_disk=False, progress=False)
    assert api.calls == ["list", "bundle"] and report.downloaded == (f"{KAGGLE_SLUG}.zip",)
    assert report.verify is not None and report.verify.files == len(list(tiny_raw.rglob("*.png")))
    api = FakeApi(listing, bundle=bundle.read_bytes())
    again = download(tmp_path / "d", api=api, check_disk=False, progress=False)
    assert api.calls == ["list"] and again.unzip.extracted == 0


def test_submit_refuses_a_file_whose_test_ids_are_unknown(token, tmp_path):
    # no sample_submission.csv or test.csv beside it: an incomplete file would have been uploaded after an INFO line
    api = FakeSubmitApi()
    sub = _submission(tmp_path, "HUVEC-17_1_B03,0\n")
    with pytest.raises(MetadataError, match=r"test id_codes .* unknown.*--sample-submission"):
        submit(sub, "densenet", api=api)
    assert api.calls == []


def test_submit_check_validates_without_credentials_or_a_message(home, tmp_path, sample, capsys):
    from cellio.cli import main

    good = _submission(tmp_path, "HUVEC-17_1_B03,0\nHUVEC-17_1_B04,1\nRPE-08_2_C05,2\n")
    assert main(["submit", str(good), "--check", "--sample-submission", str(sample)]) == 0
    out = capsys.readouterr().out
    assert "3 rows" in out and "matches every id_code of" in out and "not submitted" in out
    bad = _submission(tmp_path, "HUVEC-17_1_B03,0\n")
    assert main(["submit", str(bad), "--check", "--sample-submission", str(sample)]) == 2
    assert "2 test id_codes of sample_submission.csv are missing" in capsys.readouterr().err
    assert main(["submit", str(bad), "--check"]) == 2  # no test ids to check against: not a pass
    assert "--sample-submission" in capsys.readouterr().err
    assert main(["submit", str(good), "--sample-submission", str(sample)]) == 2  # an upload needs -m
    assert "non-empty message" in capsys.readouterr().err
