"""RxRx1 from and to Kaggle: credentials, a resumable download, unzip into the Kaggle layout, verify, submit.

One module per concern: `credentials` (find a usable credential, offline), `api` (the lazily imported `kaggle`
client and its errors), `manifest` (what a destination already holds), `fetch` (the resumable download),
`dataset` (unzip and verify) and `submission` (validate and upload). Everything that does not talk to Kaggle
(`check_credentials`, `unzip_dataset`, `verify_dataset`, `validate_submission`) works offline. Credentials are
never printed or logged: only where they came from and the username.

    cellio.check_credentials()                      # -> CredentialSource(kind, location, username)
    cellio.download("data/rxrx1")                   # resumable; unzips and verifies
    cellio.submit("submission.csv", "densenet161 + plate assignment")
"""
from __future__ import annotations

from .credentials import CredentialKind, CredentialSource, check_credentials
from .dataset import UnzipReport, VerifyReport, unzip_dataset, verify_dataset
from .fetch import KNOWN_FILE_BYTES, PART_DIR, DownloadReport, RemoteFile, download
from .manifest import MANIFEST_NAME
from .submission import SubmissionReport, submit, validate_submission

__all__ = [
    "CredentialKind",
    "CredentialSource",
    "DownloadReport",
    "UnzipReport",
    "VerifyReport",
    "SubmissionReport",
    "RemoteFile",
    "KNOWN_FILE_BYTES",
    "MANIFEST_NAME",
    "PART_DIR",
    "check_credentials",
    "download",
    "unzip_dataset",
    "verify_dataset",
    "validate_submission",
    "submit",
]
