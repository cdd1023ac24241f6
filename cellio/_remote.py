"""Concurrent byte-range reads from object storage, one call per batch (the read path's remote half).

`RangeFetcher(fs).fetch([(key, start, end), ...])` fetches every range at once through the file system's async
`_cat_ranges` (s3fs, gcsfs, adlfs, http: all requests of the batch in flight together on fsspec's event loop;
`concurrency` bounds how many), and returns the bytes in request order, or None for an object that does not exist
(the caller reports that as damage, naming the object). Why fsspec's `cat_ranges` and not obstore: measured against
the same local S3-compatible server, both were bound by the server (benchmarks/store_read.py --url has a row for
each as the ceiling), and fsspec takes the credentials, endpoints and every protocol exactly as the rest of cellio
already does (`storage_options`, `AWS_*`, `GOOGLE_APPLICATION_CREDENTIALS`), with no second configuration to keep
in sync.

Failures: a missing object is not an error here; access denied (bad or missing credentials) fails at once; any
other error (connection refused, timeouts, 5xx, a server restarting) is transient: the failed ranges alone are
retried with exponential backoff (`RetryPolicy`), then `RemoteStoreError` names the object URL, the attempts and
the last cause. Credentials are never part of a message or a log line: only URLs are.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import RemoteStoreError

__all__ = ["RetryPolicy", "RangeFetcher", "remote_error", "with_retries"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried: waits of backoff, 2*backoff, ... (at most
    max_backoff, with +-25% jitter) between `attempts` tries in all."""

    attempts: int = 5
    backoff: float = 0.25
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError(f"RetryPolicy: expected attempts >= 1 and non-negative waits, found {self}")

    def wait(self, attempt: int) -> float:
        """Seconds to wait before try number attempt + 1 (attempt counts from 1)."""
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return base * random.uniform(0.75, 1.25)


def _is_denied(exc: BaseException) -> bool:
    return isinstance(exc, PermissionError)


def remote_error(url: str, exc: BaseException, attempts: int, seconds: float) -> RemoteStoreError:
    """The error for `url` after `attempts` tries: says what failed and what to check (never any credential)."""
    cause = f"{type(exc).__name__}: {exc}"
    if _is_denied(exc):
        return RemoteStoreError(
            f"{url}: access denied ({cause}); check the credentials (storage_options key/secret/token, or "
            f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / GOOGLE_APPLICATION_CREDENTIALS) and the bucket's "
            f"permissions", url=url, attempts=attempts)
    return RemoteStoreError(
        f"{url}: the object store did not answer after {attempts} attempt{'s' if attempts != 1 else ''} over "
        f"{seconds:.1f} s ({cause}); check that the endpoint is up and reachable (storage_options "
        f"client_kwargs.endpoint_url or AWS_ENDPOINT_URL), then read again", url=url, attempts=attempts)


class RangeFetcher:
    """Fetches many byte ranges of objects in one concurrent call (see the module docstring)."""

    def __init__(self, fs: Any, retry: RetryPolicy | None = None, concurrency: int = 64):
        self.fs = fs
        self.retry = retry or RetryPolicy()
        self.concurrency = max(1, int(concurrency))

    def url(self, key: str) -> str:
        return self.fs.unstrip_protocol(key)

    def _once(self, keys: list[str], starts: list[int], ends: list[int | None]) -> list[Any]:
        if getattr(self.fs, "async_impl", False):
            from fsspec.asyn import sync

            return sync(self.fs.loop, self.fs._cat_ranges, keys, starts, ends, batch_size=self.concurrency,
                        on_error="return")
        return self.fs.cat_ranges(keys, starts, ends, on_error="return")

    def fetch(self, requests: Sequence[tuple[str, int, int | None]]) -> list[bytes | None]:
        """Bytes of every (key, start, end) range (end None: to the end of the object), in order; None where the
        object does not exist. Raises RemoteStoreError when a range still fails after the retries."""
        out: list[bytes | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        t0 = time.monotonic()
        attempt = 0
        while todo:
            attempt += 1
            try:
                got = self._once([requests[k][0] for k in todo], [requests[k][1] for k in todo],
                                 [requests[k][2] for k in todo])
            except Exception as exc:  # the whole call failed (the event loop could not even start a request)
                got = [exc] * len(todo)
            failed: list[int] = []
            last: BaseException | None = None
            for k, res in zip(todo, got):
                if isinstance(res, FileNotFoundError):
                    out[k] = None
                elif isinstance(res, BaseException):
                    if _is_denied(res):
                        raise remote_error(self.url(requests[k][0]), res, attempt, time.monotonic() - t0) from None
                    failed.append(k)
                    last = res
                else:
                    out[k] = bytes(res)
            todo = failed
            if not todo:
                break
            if attempt >= self.retry.attempts:
                assert last is not None
                raise remote_error(self.url(requests[todo[0]][0]), last, attempt, time.monotonic() - t0) from None
            wait = self.retry.wait(attempt)
            log.warning("%d of %d range reads failed (%s: %s; first %s); retrying in %.2f s (attempt %d of %d)",
                        len(todo), len(requests), type(last).__name__, last, self.url(requests[todo[0]][0]), wait,
                        attempt + 1, self.retry.attempts)
            time.sleep(wait)
        return out


def with_retries(call: Any, url: str, retry: RetryPolicy | None = None, what: str = "request") -> Any:
    """call() with transient failures retried like `RangeFetcher.fetch` (FileNotFoundError and access denied are
    raised at once; anything else becomes RemoteStoreError naming `url` after the last attempt)."""
    retry = retry or RetryPolicy()
    t0 = time.monotonic()
    for attempt in range(1, retry.attempts + 1):
        try:
            return call()
        except FileNotFoundError:
            raise
        except Exception as exc:
            if _is_denied(exc) or attempt >= retry.attempts:
                raise remote_error(url, exc, attempt, time.monotonic() - t0) from None
            wait = retry.wait(attempt)
            log.warning("%s of %s failed (%s: %s); retrying in %.2f s (attempt %d of %d)", what, url,
                        type(exc).__name__, exc, wait, attempt + 1, retry.attempts)
            time.sleep(wait)
    raise AssertionError("unreachable")
