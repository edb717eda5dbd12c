"""Fetch a public dataset archive safely: download, verify, extract, put in place.

One call to :func:`fetch` (or :func:`run_command`, the command line behind
``data_scripts/fetch_*.py``) takes a :class:`Dataset` record and:

1. stops at once when the dataset folder is already there and complete (no download);
2. takes a lock (``fcntl.flock`` on ``<root>/.<folder>.lock``) so two runs never collide;
3. downloads the archive into ``<root>/downloads/<archive>.part``, resuming with an HTTP
   ``Range`` request after a dropped connection (a server that ignores ``Range`` restarts
   cleanly), or takes an archive the user already has (``archive=PATH``);
4. verifies the checksum *before* anything is extracted;
5. extracts into a temporary folder beside the target (:mod:`labkit.archives`: absolute
   paths, ``..``, links and device files refused, macOS junk skipped);
6. renames the finished folder into place (a synthetic set in the way is moved aside to
   ``<folder>.synthetic``).

Every failure is a :class:`FetchError` whose message says what happened and what to do.

Example:
    >>> from labkit.fetch import Dataset, fetch
    >>> demo = Dataset(name="demo", title="Demo set", url="https://example.org/demo.zip",
    ...                checksum_algorithm="sha256", checksum="0" * 64,
    ...                archive_name="demo.zip", folder_name="Demo", required=("images",))
    >>> fetch(demo, root="data")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from labkit import archives
from labkit.io import atomic_write_json
from labkit.paths import SYNTHETIC_MARKER, data_root

try:  # Unix only; on Windows runs are simply not locked.
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None

MARKER_NAME = ".labkit-fetch.json"
BUSY_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
RETRIED_HTTP_CODES = (408, 429, 500, 502, 503, 504)


class FetchError(RuntimeError):
    """A fetch failed; the message says what happened and what to do."""


class FetchBusy(FetchError):
    """Another run holds the lock and the caller asked not to wait."""


class _Interrupted(Exception):
    """A network hiccup worth retrying (the ``.part`` file keeps what arrived)."""


@dataclass(frozen=True)
class Dataset:
    """Where a dataset comes from and what a complete copy looks like.

    Attributes:
        name: short name used in messages, e.g. ``"prostate"``.
        title: human-readable title.
        url: official download address of the archive.
        checksum_algorithm: a ``hashlib`` name, e.g. ``"md5"`` or ``"sha256"``.
        checksum: expected hex digest of the archive.
        archive_name: file name the archive is saved under.
        folder_name: the dataset folder inside the archive and under the data root.
        required: paths inside the folder that a complete copy has.
        licence: licence or terms of use, printed on every run.
        attribution: what to cite, printed on every run.
        redistributable: False when the terms forbid sharing copies.
    """

    name: str
    title: str
    url: str
    checksum_algorithm: str
    checksum: str
    archive_name: str
    folder_name: str
    required: tuple[str, ...] = ()
    licence: str = ""
    attribution: str = ""
    redistributable: bool = True

    def __post_init__(self):
        algorithm, value = parse_checksum(f"{self.checksum_algorithm}:{self.checksum}")
        object.__setattr__(self, "checksum_algorithm", algorithm)
        object.__setattr__(self, "checksum", value)


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch` did: ``action`` is ``"fetched"`` or ``"already-present"``."""

    path: Path
    action: str


def fetch(dataset: Dataset, root: str | os.PathLike | None = None, *, url: str | None = None,
          archive: str | os.PathLike | None = None, checksum: str | None = None, wait: bool = True,
          keep_archive: bool = False, progress: bool = True, retries: int = 3,
          retry_delay: float = 1.0, timeout: float = 60.0,
          say: Callable[[str], None] = print) -> FetchResult:
    """Put a complete, verified copy of ``dataset`` under ``root``.

    Args:
        dataset: the record describing the archive and its layout.
        root: data root; default ``labkit.paths.data_root()`` (``$LABKIT_DATA`` or ``./data``).
        url: a mirror to download from instead of ``dataset.url``.
        archive: an archive already on disk (e.g. from a USB stick); nothing is downloaded.
        checksum: ``"ALGORITHM:HEX"`` (or bare hex) overriding the record, for a mirror
            that repackages the archive.
        wait: when another run holds the lock, wait for it (True) or raise
            :class:`FetchBusy` (False).
        keep_archive: keep the downloaded archive after extraction.
        progress: show tqdm progress bars.
        retries: how many times a dropped connection is resumed within this run.
        retry_delay: seconds before the first retry (doubled each time).
        timeout: seconds without data before a connection counts as dropped.
        say: where progress messages go.

    Returns:
        A :class:`FetchResult` with the dataset folder and what was done.

    Raises:
        FetchError: with a message that says what to do.
    """
    root = Path(root).expanduser().resolve() if root else data_root()
    algorithm, expected = parse_checksum(checksum) if checksum else (
        dataset.checksum_algorithm, dataset.checksum)
    url = url or dataset.url
    say(f"{dataset.title}: source {archive or url}")
    if dataset.licence:
        say(f"Licence / terms: {dataset.licence}")
    if not dataset.redistributable:
        say("Do not share or commit this copy: each user downloads it from the source.")
    target = root / dataset.folder_name
    if _already_present(target, dataset, say):  # reading needs no lock (nor write access)
        return FetchResult(target, "already-present")
    _make_folder(root)
    with _locked(lock_path(root, dataset), wait, say):
        if _already_present(target, dataset, say):  # another run finished while we waited
            return FetchResult(target, "already-present")
        for stale in root.glob(f".{dataset.folder_name}.extracting-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        if archive is not None:
            path = Path(archive).expanduser().resolve()
            if not path.is_file():
                raise FetchError(f"archive {path} not found: check the path given to --archive.")
            say(f"Verifying {path} ...")
            actual = file_digest(path, algorithm, progress)
            if actual != expected:
                raise FetchError(f"checksum mismatch for {path}: expected {algorithm} {expected}, "
                                 f"got {actual}. Nothing was extracted and the file was left where "
                                 "it is. Ask for a fresh copy, or pass --checksum if this archive "
                                 "is a known repackaging.")
        else:
            path = _download(dataset, root, url, algorithm, expected, progress, retries,
                             retry_delay, timeout, say)
        _install(dataset, root, path, str(path if archive else url), f"{algorithm}:{expected}",
                 progress, say, kept=archive is None)
        if archive is None and not keep_archive:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the downloads folder, when empty
    say(f"Done: {dataset.title} is in {target}.")
    if dataset.attribution:
        say(f"Please cite: {dataset.attribution}")
    return FetchResult(target, "fetched")


def run_command(dataset: Dataset, argv: list[str] | None = None) -> int:
    """Command line for one dataset; returns the exit status (0 ok, 1 error, 75 busy)."""
    parser = argparse.ArgumentParser(
        description=f"Download, verify and extract {dataset.title} into the data root "
                    f"($LABKIT_DATA, default ./data) as {dataset.folder_name}/.",
        epilog=f"Source: {dataset.url}. Licence / terms: {dataset.licence} Cite: {dataset.attribution}")
    parser.add_argument("--root", type=Path, help="data root (default: $LABKIT_DATA or ./data)")
    parser.add_argument("--url", help="download from this mirror instead of the official address")
    parser.add_argument("--archive", type=Path, metavar="PATH",
                        help="use an archive you already have (e.g. from a USB stick); no download")
    parser.add_argument("--checksum", metavar="ALGO:HEX",
                        help=f"expected checksum, default {dataset.checksum_algorithm}:"
                             f"{dataset.checksum} (for a mirror that repackages the archive)")
    parser.add_argument("--no-wait", action="store_true", help="if another fetch is running, "
                        f"exit with status {BUSY_EXIT_CODE} instead of waiting")
    parser.add_argument("--keep-archive", action="store_true",
                        help="keep the downloaded archive in <root>/downloads after extraction")
    parser.add_argument("--retries", type=int, default=3,
                        help="how often a dropped connection is resumed in one run (default 3)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        fetch(dataset, args.root, url=args.url, archive=args.archive, checksum=args.checksum,
              wait=not args.no_wait, keep_archive=args.keep_archive, progress=not args.quiet,
              retries=args.retries, say=lambda message: print(message, flush=True))
    except FetchBusy as error:
        print(error, file=sys.stderr)
        return BUSY_EXIT_CODE
    except FetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume the download.", file=sys.stderr)
        return 130
    return 0


def lock_path(root: str | os.PathLike, dataset: Dataset) -> Path:
    """The lock file that serialises runs fetching ``dataset`` into ``root``."""
    return Path(root) / f".{dataset.folder_name}.lock"


def parse_checksum(text: str) -> tuple[str, str]:
    """``"md5:ABC..."``, ``"sha256:..."`` or bare hex -> (algorithm, lowercase hex).

    A bare digest's algorithm is guessed from its length (32 md5, 40 sha1, 64 sha256,
    128 sha512).
    """
    algorithm, _, value = text.strip().rpartition(":")
    value = value.strip().lower()
    guessed = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}.get(len(value), "")
    algorithm = algorithm.strip().lower().replace("-", "") or guessed
    if algorithm not in hashlib.algorithms_guaranteed or algorithm.startswith("shake"):
        raise FetchError(f"cannot read checksum {text!r}: write it as ALGORITHM:HEX, "
                         "for example md5:35138f08b1efaef89d7424d2bcc928db.")
    digits = 2 * hashlib.new(algorithm).digest_size
    if not re.fullmatch(r"[0-9a-f]+", value) or len(value) != digits:
        raise FetchError(f"checksum {text!r} is not a valid {algorithm} digest ({digits} hex "
                         "digits expected).")
    return algorithm, value


def file_digest(path: Path, algorithm: str, progress: bool = False) -> str:
    """Hex digest of a file, read in chunks (with an optional progress bar)."""
    digest = hashlib.new(algorithm)
    size = path.stat().st_size
    with open(path, "rb") as handle, archives.progress_bar(size, f"verifying {path.name}", progress) as bar:
        for chunk in iter(lambda: handle.read(archives.CHUNK_SIZE), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


# ---- lock and existing copies ----


@contextlib.contextmanager
def _locked(path: Path, wait: bool, say):
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    try:
        handle = open(path, "a+")
    except OSError as error:
        raise FetchError(f"cannot create the lock file {path}: {error.strerror or error}. Choose "
                         "a data root you can write to (--root or LABKIT_DATA).") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError, IndexError):
                holder = f" (process {int(path.read_text().split()[0])})"
            if not wait:
                raise FetchBusy(f"another fetch{holder} is already writing here (lock file {path}); "
                                "let it finish, then run again.") from None
            say(f"Waiting for another fetch{holder} to finish (lock file {path}) ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _already_present(target: Path, dataset: Dataset, say) -> bool:
    """True when ``target`` holds a complete copy; raises when it holds a broken one."""
    if not target.exists() or (target / SYNTHETIC_MARKER).exists():
        return False
    missing = [name for name in dataset.required if not (target / name).exists()]
    if missing:
        raise FetchError(f"{target} exists but is incomplete (missing: {', '.join(missing)}). "
                         "Delete it or move it aside, then run again.")
    marker = target / MARKER_NAME
    if marker.exists():
        fetched = "earlier"
        with contextlib.suppress(OSError, ValueError, AttributeError):
            fetched = json.loads(marker.read_text()).get("fetched", "earlier")
        say(f"{dataset.title} is already in {target} (fetched {fetched}); nothing to do.")
    else:
        say(f"{target} already exists and has the expected layout (it was not fetched by this "
            "script); leaving it as it is. Move it aside to fetch a fresh copy.")
    return True


# ---- download ----


def _download(dataset, root, url, algorithm, expected, progress, retries, retry_delay, timeout,
              say) -> Path:
    """The verified archive in ``<root>/downloads``: an earlier download, or a new one."""
    folder = root / "downloads"
    final, part = folder / dataset.archive_name, folder / f"{dataset.archive_name}.part"
    if final.exists():
        say(f"Found an earlier download {final}; verifying it instead of downloading.")
    else:
        _make_folder(folder)
        try:
            for failures in range(max(0, retries) + 1):
                try:
                    _download_once(url, part, progress, timeout, say)
                    break
                except _Interrupted as problem:
                    have = part.stat().st_size if part.exists() else 0
                    if failures == max(0, retries) and have:
                        raise FetchError(f"download from {url} interrupted ({problem}); "
                                         f"{have / 1e6:.1f} MB are kept in {part}. Run the same "
                                         "command again to resume.") from None
                    if failures == max(0, retries):
                        part.unlink(missing_ok=True)
                        with contextlib.suppress(OSError):
                            folder.rmdir()
                        raise FetchError(f"could not download from {url} ({problem}). Check your "
                                         "internet connection or the address (--url), then run "
                                         "again; or use --archive PATH.") from None
                    delay = retry_delay * 2 ** failures
                    where = f"resuming from {have / 1e6:.1f} MB" if have else "retrying"
                    say(f"Connection problem ({problem}); {where} in {delay:.0f} s "
                        f"(retry {failures + 1} of {retries}).")
                    time.sleep(delay)
        except archives.ArchiveError as error:  # not enough free space
            raise FetchError(str(error)) from None
        except OSError as error:
            if error.errno in DISK_FULL:
                part.unlink(missing_ok=True)
                raise FetchError(f"disk full while downloading {dataset.archive_name} into {folder}; "
                                 "the partial file was removed. Free some space (or choose a bigger "
                                 "disk with --root) and run again.") from None
            raise FetchError(f"could not write {part}: {error.strerror or error}.") from None
        os.replace(part, final)
    say(f"Verifying the {algorithm} checksum of {final.name} ...")
    actual = file_digest(final, algorithm, progress)
    if actual != expected:
        kept = final.with_name(final.name + ".checksum-mismatch")
        os.replace(final, kept)
        with open(kept, "rb") as handle:  # a moved address often answers with a web page
            web_page = handle.read(512).lstrip().lower().startswith((b"<!doctype html", b"<html"))
        hint = (" The server sent a web page, not the archive: the address has probably moved; "
                "find the current one and pass it with --url.") if web_page else ""
        raise FetchError(f"checksum mismatch: expected {algorithm} {expected}, got {actual}. "
                         f"Nothing was extracted; the downloaded file was kept as {kept}.{hint} "
                         "Delete it and run again to download afresh; if you use a mirror that "
                         "repackages the archive, pass its checksum with --checksum ALGO:HEX.")
    return final


def _download_once(url: str, part: Path, progress: bool, timeout: float, say) -> None:
    """Fill ``part`` from ``url``, resuming after the bytes it already holds."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "labkit-fetch/1.0", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:
            if (error.headers.get("Content-Range") or "").strip() == f"bytes */{start}":
                say(f"{part.name.removesuffix('.part')} was already fully downloaded.")
                return
            part.unlink(missing_ok=True)  # the partial file no longer fits the server's file
            raise _Interrupted("the server refused to resume; starting over") from None
        if error.code in RETRIED_HTTP_CODES:
            raise _Interrupted(f"server answered {error.code} {error.reason}") from None
        raise FetchError(f"{url} answered {error.code} {error.reason}. Check the address (--url), "
                         "or download the archive some other way and pass --archive PATH.") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, socket.gaierror):
            raise FetchError(f"cannot reach {url} ({error.reason}). Check your internet "
                             "connection, pass a mirror with --url, or use --archive PATH.") from None
        raise _Interrupted(str(error.reason)) from None
    except (OSError, http.client.HTTPException) as error:
        raise _Interrupted(str(error) or type(error).__name__) from None
    with response:
        if start and response.status != 206:
            say("The server does not support resuming; downloading again from the start.")
        initial = start if response.status == 206 else 0
        length = response.headers.get("Content-Length")
        total = initial + int(length) if length and length.isdigit() else None
        name = part.name.removesuffix(".part")
        archives.check_free_space(part.parent, (total or 0) - initial, f"download {name}")
        bar = archives.progress_bar(total, name, progress, initial)
        with open(part, "ab" if initial else "wb") as handle, bar:
            while True:
                try:
                    chunk = response.read(archives.CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as error:
                    raise _Interrupted(str(error) or type(error).__name__) from None
                if not chunk:
                    break
                archives.write_chunk(handle, chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"connection closed after {size / 1e6:.1f} MB of {total / 1e6:.1f} MB")


# ---- installing ----


def _install(dataset: Dataset, root: Path, archive: Path, source: str, checksum: str,
             progress: bool, say, kept: bool) -> None:
    """Extract ``archive`` beside the target and rename the dataset folder into place."""
    temporary = Path(tempfile.mkdtemp(prefix=f".{dataset.folder_name}.extracting-", dir=root))
    try:
        files = archives.extract_safely(archive, temporary, progress, say)
        candidates = [temporary / dataset.folder_name, temporary]
        candidates += sorted(path for path in temporary.iterdir() if path.is_dir())
        found = next((folder for folder in candidates if folder.is_dir() and any(folder.iterdir())
                      and all((folder / name).exists() for name in dataset.required)), None)
        if found is None:  # not the official top folder, nor (a repackaged mirror) the layout
            missing = [name for name in dataset.required
                       if not (temporary / dataset.folder_name / name).exists()]
            raise FetchError(f"{archive.name} does not have the expected layout: "
                             f"{dataset.folder_name}/ lacks {', '.join(missing) or 'its files'}. "
                             "Nothing was installed; check that the archive (or mirror) is the "
                             "right one.")
        atomic_write_json(found / MARKER_NAME, {
            "dataset": dataset.name, "source": source, "checksum": checksum, "files": files,
            "fetched": datetime.now(timezone.utc).isoformat(timespec="seconds")}).chmod(0o644)
        _move_into_place(found, root / dataset.folder_name, say)
    except archives.ArchiveError as error:
        raise FetchError(str(error)) from None
    except OSError as error:
        note = (f" The verified archive is kept at {archive}, so no new download is needed."
                if kept else "")
        if error.errno in DISK_FULL:
            raise FetchError(f"disk full while extracting {archive.name} into {root}; the partial "
                             f"output was removed. Free some space and run again.{note}") from None
        raise FetchError(f"could not extract {archive.name} into {root}: {error}. The partial "
                         f"output was removed.{note}") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _move_into_place(found: Path, target: Path, say) -> None:
    aside = None
    if target.exists():  # only a synthetic set gets here (see _already_present)
        aside, number = target.with_name(f"{target.name}.synthetic"), 2
        while aside.exists():
            aside, number = target.with_name(f"{target.name}.synthetic-{number}"), number + 1
        os.rename(target, aside)
    try:
        os.rename(found, target)
    except OSError:
        if aside is not None:
            os.rename(aside, target)
        raise
    if aside is not None:
        say(f"The real set replaces the synthetic one, which was moved aside to {aside} "
            "(delete it when you no longer need it).")


# ---- small helpers ----


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FetchError(f"cannot create {folder}: {error.strerror or error}. Choose another "
                         "data root with --root or LABKIT_DATA.") from None
