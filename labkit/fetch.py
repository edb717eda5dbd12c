"""Fetch a public dataset archive safely: download, verify, extract, put in place.

One call to :func:`fetch` (or :func:`run_command`, the command line behind
``data_scripts/fetch_*.py``) takes a :class:`Dataset` record and:

1. stops at once when the dataset folder is already there and complete (no download);
2. takes a lock (``fcntl.flock`` on ``<root>/.<folder>.lock``) so two runs never collide;
3. downloads the archive into ``<root>/downloads/<archive>.part``, resuming with an HTTP
   ``Range`` request after a dropped connection (a server that ignores ``Range`` restarts
   cleanly), or takes an archive the user already has (``archive=PATH``);
4. verifies the checksum *before* anything is extracted;
5. extracts into a temporary folder beside the target, refusing absolute paths, ``..``,
   links and device files, skipping macOS junk (``._*``, ``__MACOSX``, ``.DS_Store``);
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
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable

from labkit.io import atomic_write_json
from labkit.paths import SYNTHETIC_MARKER, data_root

try:  # Unix only; on Windows runs are simply not locked.
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None

CHUNK_SIZE = 1 << 20
MARKER_NAME = ".labkit-fetch.json"
DOWNLOADS_FOLDER = "downloads"
BUSY_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"
_JUNK_NAMES = {"__MACOSX", ".DS_Store"}
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DIGEST_LENGTHS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}


class FetchError(RuntimeError):
    """A fetch failed; the message says what happened and what to do."""


class FetchBusy(FetchError):
    """Another run holds the lock and the caller asked not to wait."""


class _Interrupted(Exception):
    """A network hiccup worth retrying (the ``.part`` file keeps what arrived)."""


class _PartComplete(Exception):
    """The server says the ``.part`` file already holds the whole archive (HTTP 416)."""


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


@dataclass(frozen=True)
class _Options:
    say: Callable[[str], None]
    progress: bool
    retries: int
    retry_delay: float
    timeout: float


# ---------------------------------------------------------------- public entry points


def fetch(
    dataset: Dataset,
    root: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    archive: str | os.PathLike | None = None,
    checksum: str | None = None,
    wait: bool = True,
    keep_archive: bool = False,
    progress: bool = True,
    retries: int = 3,
    retry_delay: float = 1.0,
    timeout: float = 60.0,
    say: Callable[[str], None] = print,
) -> FetchResult:
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
    options = _Options(say, progress, max(0, retries), retry_delay, timeout)
    _describe_source(dataset, archive or url or dataset.url, say)
    target = root / dataset.folder_name
    if _already_present(target, dataset, say):  # reading needs no lock (nor write access)
        return FetchResult(target, "already-present")
    _make_folder(root)
    with _locked(lock_path(root, dataset), wait, say):
        if _already_present(target, dataset, say):  # another run finished while we waited
            return FetchResult(target, "already-present")
        _remove_stale_temporaries(root, dataset)
        if archive is not None:
            archive_path = _check_given_archive(Path(archive).expanduser().resolve(), algorithm,
                                                expected, options)
        else:
            archive_path = _obtain_download(dataset, root, url or dataset.url, algorithm, expected,
                                            options)
        _install(dataset, root, archive_path, str(archive_path if archive else url or dataset.url),
                 f"{algorithm}:{expected}", options, downloaded=archive is None)
        if archive is None and not keep_archive:
            archive_path.unlink(missing_ok=True)
            _remove_if_empty(archive_path.parent)
    say(f"Done: {dataset.title} is in {target}.")
    if dataset.attribution:
        say(f"Please cite: {dataset.attribution}")
    return FetchResult(target, "fetched")


def run_command(dataset: Dataset, argv: list[str] | None = None) -> int:
    """Command line for one dataset; returns the exit status (0 ok, 1 error, 75 busy)."""
    args = _build_parser(dataset).parse_args(argv)
    try:
        fetch(dataset, args.root, url=args.url, archive=args.archive, checksum=args.checksum,
              wait=not args.no_wait, keep_archive=args.keep_archive, progress=not args.quiet,
              retries=args.retries, say=_print_now)
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
    algorithm = algorithm.strip().lower().replace("-", "") or _DIGEST_LENGTHS.get(len(value), "")
    if algorithm not in hashlib.algorithms_guaranteed or algorithm.startswith("shake"):
        raise FetchError(f"cannot read checksum {text!r}: write it as ALGORITHM:HEX, "
                         "for example md5:35138f08b1efaef89d7424d2bcc928db.")
    if not re.fullmatch(r"[0-9a-f]+", value) or len(value) != 2 * hashlib.new(algorithm).digest_size:
        raise FetchError(f"checksum {text!r} is not a valid {algorithm} digest "
                         f"({2 * hashlib.new(algorithm).digest_size} hex digits expected).")
    return algorithm, value


def file_digest(path: Path, algorithm: str, progress: bool = False) -> str:
    """Hex digest of a file, read in chunks (with an optional progress bar)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle, _bar(path.stat().st_size, f"verifying {path.name}",
                                          progress) as bar:
        for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


# ---------------------------------------------------------------- messages and CLI


def _print_now(message: str) -> None:
    print(message, flush=True)


def _describe_source(dataset: Dataset, source, say) -> None:
    say(f"{dataset.title}: source {source}")
    if dataset.licence:
        say(f"Licence / terms: {dataset.licence}")
    if not dataset.redistributable:
        say("Do not share or commit this copy: each user downloads it from the source.")


def _build_parser(dataset: Dataset) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f"Download, verify and extract {dataset.title} into the data root "
                    f"($LABKIT_DATA, default ./data) as {dataset.folder_name}/.",
        epilog=f"Source: {dataset.url}. Licence / terms: {dataset.licence} Cite: {dataset.attribution}",
    )
    parser.add_argument("--root", type=Path, help="data root (default: $LABKIT_DATA or ./data)")
    parser.add_argument("--url", help="download from this mirror instead of the official address")
    parser.add_argument("--archive", type=Path, metavar="PATH",
                        help="use an archive you already have (e.g. from a USB stick); no download")
    parser.add_argument("--checksum", metavar="ALGO:HEX",
                        help=f"expected checksum, default {dataset.checksum_algorithm}:"
                             f"{dataset.checksum} (for a mirror that repackages the archive)")
    parser.add_argument("--no-wait", action="store_true",
                        help=f"if another fetch is running, exit with status {BUSY_EXIT_CODE} instead of waiting")
    parser.add_argument("--keep-archive", action="store_true",
                        help="keep the downloaded archive in <root>/downloads after extraction")
    parser.add_argument("--retries", type=int, default=3,
                        help="how often a dropped connection is resumed in one run (default 3)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


# ---------------------------------------------------------------- lock and existing copies


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
            holder = _lock_holder(path)
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


def _lock_holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return f" (process {int(path.read_text().split()[0])})"
    return ""


def _remove_stale_temporaries(root: Path, dataset: Dataset) -> None:
    """Temporary folders left by a killed run (we hold the lock, so none is in use)."""
    for stale in root.glob(f".{dataset.folder_name}.extracting-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _already_present(target: Path, dataset: Dataset, say) -> bool:
    """True when ``target`` holds a complete copy; raises when it holds a broken one."""
    if not target.exists() or (target / SYNTHETIC_MARKER).exists():
        return False
    missing = _missing_paths(target, dataset)
    if missing:
        raise FetchError(f"{target} exists but is incomplete (missing: {', '.join(missing)}). "
                         "Delete it or move it aside, then run again.")
    marker = target / MARKER_NAME
    if marker.exists():
        say(f"{dataset.title} is already in {target} (fetched {_marker_date(marker)}); nothing to do.")
    else:
        say(f"{target} already exists and has the expected layout (it was not fetched by this "
            "script); leaving it as it is. Move it aside to fetch a fresh copy.")
    return True


def _marker_date(marker: Path) -> str:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads(marker.read_text()).get("fetched", "earlier")
    return "earlier"


def _missing_paths(folder: Path, dataset: Dataset) -> list[str]:
    return [name for name in dataset.required if not (folder / name).exists()]


# ---------------------------------------------------------------- archive on disk / download


def _check_given_archive(path: Path, algorithm: str, expected: str, options: _Options) -> Path:
    if not path.is_file():
        raise FetchError(f"archive {path} not found: check the path given to --archive.")
    options.say(f"Verifying {path} ...")
    actual = file_digest(path, algorithm, options.progress)
    if actual != expected:
        raise FetchError(f"checksum mismatch for {path}: expected {algorithm} {expected}, got "
                         f"{actual}. Nothing was extracted and the file was left where it is. "
                         "Ask for a fresh copy, or pass --checksum if this archive is a known "
                         "repackaging.")
    return path


def _obtain_download(dataset: Dataset, root: Path, url: str, algorithm: str, expected: str,
                     options: _Options) -> Path:
    """Download (or reuse a verified earlier download); returns the verified archive."""
    folder = root / DOWNLOADS_FOLDER
    final = folder / dataset.archive_name
    part = folder / f"{dataset.archive_name}.part"
    if final.exists():
        options.say(f"Found an earlier download {final}; verifying it instead of downloading.")
        _verify_download(final, algorithm, expected, options)
        return final
    _make_folder(folder)
    try:
        _download_with_retries(url, part, options)
    except OSError as error:
        if error.errno in _DISK_FULL:
            part.unlink(missing_ok=True)
            raise FetchError(f"disk full while downloading {dataset.archive_name} into {folder}; "
                             "the partial file was removed. Free some space (or choose a bigger "
                             "disk with --root) and run again.") from None
        raise FetchError(f"could not write {part}: {error.strerror or error}.") from None
    _verify_download(part, algorithm, expected, options)
    os.replace(part, final)
    return final


def _verify_download(path: Path, algorithm: str, expected: str, options: _Options) -> None:
    options.say(f"Verifying the {algorithm} checksum of {path.name.removesuffix('.part')} ...")
    actual = file_digest(path, algorithm, options.progress)
    if actual == expected:
        return
    kept = path.parent / (path.name.removesuffix(".part") + ".checksum-mismatch")
    os.replace(path, kept)
    raise FetchError(f"checksum mismatch: expected {algorithm} {expected}, got {actual}. Nothing "
                     f"was extracted; the downloaded file was kept as {kept}.{_web_page_hint(kept)} "
                     "Delete it and run again to download afresh; if you use a mirror that "
                     "repackages the archive, pass its checksum with --checksum ALGO:HEX.")


def _web_page_hint(path: Path) -> str:
    """A moved download address often answers with an HTML page instead of the archive."""
    with open(path, "rb") as handle:
        start = handle.read(512).lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return (" The server sent a web page, not the archive: the address has probably moved; "
                "find the current one and pass it with --url.")
    return ""


def _download_with_retries(url: str, part: Path, options: _Options) -> None:
    failures = 0
    while True:
        try:
            _download_once(url, part, options)
            return
        except _Interrupted as problem:
            failures += 1
            have = part.stat().st_size if part.exists() else 0
            if failures > options.retries:
                raise FetchError(_interrupted_message(url, problem, part, have)) from None
            delay = options.retry_delay * 2 ** (failures - 1)
            where = f"resuming from {_megabytes(have)}" if have else "retrying"
            options.say(f"Connection problem ({problem}); {where} in {delay:.0f} s "
                        f"(retry {failures} of {options.retries}).")
            time.sleep(delay)


def _interrupted_message(url: str, problem: _Interrupted, part: Path, have: int) -> str:
    if have:
        return (f"download from {url} interrupted ({problem}); {_megabytes(have)} are kept in "
                f"{part}. Run the same command again to resume.")
    part.unlink(missing_ok=True)
    _remove_if_empty(part.parent)
    return (f"could not download from {url} ({problem}). Check your internet connection or the "
            "address (--url), then run again; or use --archive PATH.")


def _download_once(url: str, part: Path, options: _Options) -> None:
    start = part.stat().st_size if part.exists() else 0
    name = part.name.removesuffix(".part")
    try:
        _fill_part(url, part, start, name, options)
    except _PartComplete:
        options.say(f"{name} was already fully downloaded.")


def _fill_part(url: str, part: Path, start: int, name: str, options: _Options) -> None:
    with _open_url(url, start, part, options.timeout) as response:
        mode, total = _write_mode(response, start, part, options.say)
        initial = start if mode == "ab" else 0
        _check_free_space(part.parent, (total or 0) - initial, f"download {name}")
        with open(part, mode) as handle, _bar(total, name, options.progress, initial) as bar:
            for chunk in _read_chunks(response):
                _write(handle, chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"connection closed after {_megabytes(size)} of {_megabytes(total)}")
    if total is not None and size > total:
        part.unlink()
        raise _Interrupted("received more data than announced; starting over")


@contextlib.contextmanager
def _open_url(url: str, start: int, part: Path, timeout: float):
    headers = {"User-Agent": "labkit-fetch/1.0", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as error:
        _raise_for_http_error(error, url, start, part)
    except urllib.error.URLError as error:
        if isinstance(error.reason, socket.gaierror):
            raise FetchError(f"cannot reach {url} ({error.reason}). Check your internet "
                             "connection, pass a mirror with --url, or use --archive PATH.") from None
        raise _Interrupted(str(error.reason)) from None
    except (OSError, http.client.HTTPException) as error:
        raise _Interrupted(str(error) or type(error).__name__) from None
    with response:
        yield response


def _raise_for_http_error(error: urllib.error.HTTPError, url: str, start: int, part: Path):
    if error.code == 416 and start:
        if (error.headers.get("Content-Range") or "").strip() == f"bytes */{start}":
            raise _PartComplete() from None
        part.unlink(missing_ok=True)  # the partial file no longer fits the server's file
        raise _Interrupted("the server refused to resume; starting over")
    if error.code in (408, 429, 500, 502, 503, 504):
        raise _Interrupted(f"server answered {error.code} {error.reason}")
    raise FetchError(f"{url} answered {error.code} {error.reason}. Check the address (--url), or "
                     "download the archive some other way and pass --archive PATH.") from None


def _write_mode(response, start: int, part: Path, say) -> tuple[str, int | None]:
    """("ab", total) when the server resumes at ``start``, ("wb", total) to start over."""
    if response.status == 206:
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)",
                             (response.headers.get("Content-Range") or "").strip())
        if not match or int(match.group(1)) != start:
            part.unlink(missing_ok=True)
            raise _Interrupted("the server answered with an unexpected range; starting over")
        return "ab", None if match.group(3) == "*" else int(match.group(3))
    if start:
        say("The server does not support resuming; downloading again from the start.")
    length = response.headers.get("Content-Length")
    return "wb", int(length) if length and length.isdigit() else None


def _read_chunks(response):
    while True:
        try:
            chunk = response.read(CHUNK_SIZE)
        except (OSError, http.client.HTTPException) as error:
            raise _Interrupted(str(error) or type(error).__name__) from None
        if not chunk:
            return
        yield chunk


def _write(handle, chunk: bytes) -> None:
    """Every byte this module writes goes through here (tests simulate a full disk)."""
    handle.write(chunk)


def _check_free_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise FetchError(f"not enough disk space to {what} in {folder}: {_megabytes(needed)} "
                         f"needed, {_megabytes(free)} free. Free some space or choose another "
                         "disk with --root, then run again.")


# ---------------------------------------------------------------- safe extraction


@dataclass(frozen=True)
class _Entry:
    path: PurePosixPath
    is_dir: bool
    size: int
    handle: object  # TarInfo or ZipInfo


def _install(dataset: Dataset, root: Path, archive: Path, source: str, checksum: str,
             options: _Options, downloaded: bool) -> None:
    """Extract ``archive`` beside the target and rename the dataset folder into place."""
    temporary = Path(tempfile.mkdtemp(prefix=f".{dataset.folder_name}.extracting-", dir=root))
    try:
        files = _extract_safely(archive, temporary, options)
        found = _find_dataset_folder(temporary, dataset, archive)
        marker = atomic_write_json(found / MARKER_NAME, {
            "dataset": dataset.name, "source": source, "checksum": checksum, "files": files,
            "fetched": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        marker.chmod(0o644)
        _move_into_place(found, root / dataset.folder_name, options.say)
    except OSError as error:
        kept = f" The verified archive is kept at {archive}, so no new download is needed." \
            if downloaded else ""
        if error.errno in _DISK_FULL:
            raise FetchError(f"disk full while extracting {archive.name} into {root}; the "
                             f"partial output was removed. Free some space and run again.{kept}") from None
        raise FetchError(f"could not extract {archive.name} into {root}: {error}. The partial "
                         f"output was removed.{kept}") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _extract_safely(archive: Path, destination: Path, options: _Options) -> int:
    """Check every entry, then write the non-junk ones; returns the number of files."""
    with _open_archive(archive) as (entries, opener):
        total = sum(entry.size for entry in entries if not entry.is_dir)
        _check_free_space(destination, total, f"extract {archive.name}")
        options.say(f"Extracting {archive.name} ({_megabytes(total)}) ...")
        with _bar(total, f"extracting {archive.name}", options.progress) as bar:
            for entry in entries:
                _write_entry(entry, destination, opener, bar)
    return sum(not entry.is_dir for entry in entries)


@contextlib.contextmanager
def _open_archive(archive: Path):
    """Yield (checked entries, opener) for a zip or tar (plain or compressed) archive."""
    with open(archive, "rb") as handle:
        is_zip = handle.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    try:
        if is_zip:
            with zipfile.ZipFile(archive) as bundle:
                yield _checked(archive, bundle.infolist(), _zip_entry), bundle.open
        else:
            with tarfile.open(archive, "r:*") as bundle:
                yield _checked(archive, bundle.getmembers(), _tar_entry), bundle.extractfile
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
        detail = str(error).splitlines()[0].rstrip(":") if str(error) else type(error).__name__
        raise FetchError(f"{archive} is not a readable zip or tar archive ({detail}). Delete it "
                         "and run again, or check the file given to --archive.") from None


def _checked(archive: Path, members: list, describe) -> list[_Entry]:
    entries = []
    for member in members:
        entry = describe(archive, member)
        if entry is not None:
            entries.append(entry)
    return entries


def _tar_entry(archive: Path, member: tarfile.TarInfo) -> _Entry | None:
    path = _safe_member_path(archive, member.name)
    if path is None or _is_junk(path):
        return None
    if member.issym() or member.islnk():
        _refuse(archive, member.name, f"is a link (to {member.linkname!r})")
    if member.ischr() or member.isblk() or member.isfifo():
        _refuse(archive, member.name, "is a device file or FIFO")
    if not (member.isdir() or member.isfile()):
        _refuse(archive, member.name, "has an unsupported entry type")
    return _Entry(path, member.isdir(), 0 if member.isdir() else member.size, member)


def _zip_entry(archive: Path, info: zipfile.ZipInfo) -> _Entry | None:
    path = _safe_member_path(archive, info.filename)
    if path is None or _is_junk(path):
        return None
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        _refuse(archive, info.filename, "is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        _refuse(archive, info.filename, "is a device file, FIFO or socket")
    return _Entry(path, info.is_dir(), 0 if info.is_dir() else info.file_size, info)


def _safe_member_path(archive: Path, name: str) -> PurePosixPath | None:
    """The member's path relative to the destination, or None for an empty name."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"[A-Za-z]:", normalised):
        _refuse(archive, name, "has an absolute path")
    parts = [part for part in normalised.split("/") if part not in ("", ".")]
    if ".." in parts:
        _refuse(archive, name, "points outside the destination ('..')")
    return PurePosixPath(*parts) if parts else None


def _is_junk(path: PurePosixPath) -> bool:
    return any(part in _JUNK_NAMES or part.startswith("._") for part in path.parts)


def _refuse(archive: Path, name: str, problem: str):
    raise FetchError(f"refusing to extract {archive}: entry {name!r} {problem}. Nothing was "
                     "extracted. The archive is not the official one: delete it and download "
                     "again from the official address.")


def _write_entry(entry: _Entry, destination: Path, opener, bar) -> None:
    target = destination.joinpath(*entry.path.parts)
    if not _is_within(target, destination):  # defence in depth; the name checks should suffice
        _refuse(destination, str(entry.path), "resolves outside the destination")
    if entry.is_dir:
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with opener(entry.handle) as source, open(target, "wb") as handle:
        for chunk in iter(lambda: source.read(CHUNK_SIZE), b""):
            _write(handle, chunk)
            bar.update(len(chunk))


def _is_within(path: Path, folder: Path) -> bool:
    real_folder = os.path.realpath(folder)
    real_parent = os.path.realpath(path.parent)
    return os.path.commonpath([real_folder, real_parent]) == real_folder


def _find_dataset_folder(extracted: Path, dataset: Dataset, archive: Path) -> Path:
    """The official top folder, or (for a repackaged mirror) the folder with the layout."""
    candidates = [extracted / dataset.folder_name, extracted]
    candidates += sorted(path for path in extracted.iterdir() if path.is_dir())
    for candidate in candidates:
        if candidate.is_dir() and not _missing_paths(candidate, dataset) and any(candidate.iterdir()):
            return candidate
    missing = _missing_paths(extracted / dataset.folder_name, dataset)
    raise FetchError(f"{archive.name} does not have the expected layout: {dataset.folder_name}/ "
                     f"lacks {', '.join(missing) or 'its files'}. Nothing was installed; check "
                     "that the archive (or mirror) is the right one.")


def _move_into_place(found: Path, target: Path, say) -> None:
    aside = None
    if target.exists():  # only a synthetic set gets here (see _already_present)
        aside = _free_name(target.with_name(f"{target.name}.synthetic"))
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


def _free_name(path: Path) -> Path:
    candidate, number = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}-{number}")
        number += 1
    return candidate


# ---------------------------------------------------------------- small helpers


def _bar(total: int | None, description: str, enabled: bool, initial: int = 0):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="B", unit_scale=True,
                unit_divisor=1000, disable=not enabled, mininterval=0.5, leave=False)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FetchError(f"cannot create {folder}: {error.strerror or error}. Choose another "
                         "data root with --root or LABKIT_DATA.") from None


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


__all__ = ["Dataset", "FetchBusy", "FetchError", "FetchResult", "fetch", "file_digest",
           "lock_path", "parse_checksum", "run_command"]

