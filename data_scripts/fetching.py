"""Fetch a public dataset archive safely: download, verify, extract, put in place.

:func:`fetch` (:func:`run_command` is the command line of ``data_scripts/fetch_*.py``) does
nothing when the dataset folder is complete; else, holding a lock, it downloads the archive
(resuming with an HTTP ``Range`` request) or takes the user's copy, verifies the checksum
*before* extracting anything, extracts beside the target (an absolute path, ``..``, a link or a
special file refuses the archive; macOS junk is skipped) and renames the folder into place (a
synthetic set in the way moves to ``<folder>.synthetic``). Every failure is a
:class:`FetchError` whose message says what happened and what to do.

Example:
    >>> demo = Dataset(name="demo", title="Demo set", url="https://example.org/demo.zip",
    ...                checksum_algorithm="sha256", checksum="0" * 64,
    ...                archive_name="demo.zip", folder_name="Demo", required=("images",))
    >>> fetch(demo, root="data")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import os
import re
import shutil
import ssl
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tqdm import tqdm
from tqdm.utils import CallbackIOWrapper

from labkit.io import atomic_write_json
from labkit.paths import SYNTHETIC_MARKER, data_root

MARKER_NAME = ".labkit-fetch.json"
BUSY_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
RETRIED_HTTP_CODES = (408, 429, 500, 502, 503, 504)
NETWORK_ERRORS = (ConnectionError, TimeoutError, urllib.error.URLError, http.client.HTTPException,
                  ssl.SSLError)  # any other OSError while downloading is the local disk's
# tarfile's "data" filter (Python 3.10.12+, 3.11.4+) also clears setuid bits and write for others.
TAR_OPTIONS = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class FetchError(RuntimeError):
    """A fetch failed; the message says what happened and what to do."""


class FetchBusy(FetchError):
    """Another run holds the lock and the caller asked not to wait."""


class _Interrupted(Exception):
    """A network hiccup worth retrying (the ``.part`` file keeps what arrived)."""


@dataclass(frozen=True)
class Dataset:
    """Where a dataset comes from and what a complete copy looks like.

    ``checksum`` is the archive's hex digest by ``checksum_algorithm`` (a ``hashlib`` name);
    ``folder_name`` is the dataset folder inside the archive and under the data root;
    ``required`` lists paths a complete copy has; ``licence`` and ``attribution`` are printed on
    every run; ``redistributable`` is False when the terms forbid sharing copies.
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
    """Put a complete, verified copy of ``dataset`` under ``root`` (default ``data_root()``).

    ``url`` is a mirror to use instead of ``dataset.url``; ``archive`` an archive already on disk
    (nothing is downloaded, the file is never moved); ``checksum`` (``"ALGORITHM:HEX"`` or bare
    hex) overrides the record's, for a mirror that repackages the archive. ``wait=False`` raises
    :class:`FetchBusy` instead of waiting for another run. A dropped connection is resumed up to
    ``retries`` times, after ``retry_delay`` seconds (doubled each time); ``timeout`` is how long
    without data counts as dropped. Messages go to ``say``; ``progress`` shows tqdm bars.

    Raises:
        FetchError: with a message that says what to do.
    """
    root = Path(root).expanduser().resolve() if root else data_root()
    algorithm, expected = parse_checksum(checksum or
                                         f"{dataset.checksum_algorithm}:{dataset.checksum}")
    url = url or dataset.url
    say(f"{dataset.title}: source {archive or url}")
    if dataset.licence:
        say(f"Licence / terms: {dataset.licence}")
    if not dataset.redistributable:
        say("Do not share or commit this copy: each user downloads it from the source.")
    target = root / dataset.folder_name
    if _already_present(target, dataset, say):  # reading needs no lock (nor write access)
        return FetchResult(target, "already-present")
    with _locked(lock_path(root, dataset), wait, say):
        if _already_present(target, dataset, say):  # another run finished while we waited
            return FetchResult(target, "already-present")
        if archive is not None:
            path = Path(archive).expanduser().resolve()
            if not path.is_file():
                raise FetchError(f"archive {path} not found: check the path given to --archive.")
        else:
            path = _download(dataset, root, url, progress, retries, retry_delay, timeout, say)
        _verify(path, algorithm, expected, progress, say, downloaded=archive is None)
        _install(dataset, root, path, str(path if archive else url), f"{algorithm}:{expected}",
                 progress, say, downloaded=archive is None)
        if archive is None and not keep_archive:
            path.unlink()
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
        epilog=f"Source: {dataset.url}. Licence / terms: {dataset.licence} "
               f"Cite: {dataset.attribution}")
    add = parser.add_argument
    add("--root", type=Path, help="data root (default: $LABKIT_DATA or ./data)")
    add("--url", help="download from this mirror instead of the official address")
    add("--archive", type=Path, metavar="PATH",
        help="use an archive you already have (e.g. from a USB stick); no download")
    add("--checksum", metavar="ALGO:HEX", help="expected checksum, default "
        f"{dataset.checksum_algorithm}:{dataset.checksum} (for a mirror that repackages it)")
    add("--no-wait", action="store_true",
        help=f"if another fetch is running, exit with status {BUSY_EXIT_CODE} instead of waiting")
    add("--keep-archive", action="store_true",
        help="keep the downloaded archive in <root>/downloads after extraction")
    add("--retries", type=int, default=3,
        help="how often a dropped connection is resumed in one run (default 3)")
    add("--quiet", action="store_true", help="no progress bars")
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
    """``"md5:ABC..."``, ``"sha-256:..."`` or bare hex (the algorithm told by the length) ->
    ``(algorithm, lowercase hex)``."""
    algorithm, _, value = text.strip().lower().rpartition(":")
    guessed = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}.get(len(value), "")
    algorithm = algorithm.replace("-", "") or guessed
    if algorithm not in hashlib.algorithms_guaranteed or algorithm.startswith("shake"):
        raise FetchError(f"cannot read checksum {text!r}: write it as ALGORITHM:HEX, "
                         "for example md5:35138f08b1efaef89d7424d2bcc928db.")
    digits = 2 * hashlib.new(algorithm).digest_size
    if not re.fullmatch(f"[0-9a-f]{{{digits}}}", value):
        raise FetchError(f"checksum {text!r} is not a valid {algorithm} digest ({digits} hex "
                         "digits expected).")
    return algorithm, value


@contextlib.contextmanager
def _locked(path: Path, wait: bool, say):
    """Hold ``fcntl.flock`` on ``path``; the system releases it when the process ends."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError as error:
        raise FetchError(f"cannot create the lock file {path}: {error.strerror or error}. Choose "
                         "a data root you can write to (--root or LABKIT_DATA).") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise FetchBusy(f"another fetch is already writing here (lock file {path}); "
                                "let it finish, then run again.") from None
            say(f"Waiting for another fetch to finish (lock file {path}) ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _already_present(target: Path, dataset: Dataset, say) -> bool:
    """True when ``target`` holds a complete copy; raises when it holds a broken one."""
    if not target.exists() or (target / SYNTHETIC_MARKER).exists():
        return False
    missing = [name for name in dataset.required if not (target / name).exists()]
    if missing:
        raise FetchError(f"{target} exists but is incomplete (missing: {', '.join(missing)}). "
                         "Delete it or move it aside, then run again.")
    if not (target / MARKER_NAME).exists():
        say(f"{target} already exists and has the expected layout (it was not fetched by this "
            "script); leaving it as it is. Move it aside to fetch a fresh copy.")
        return True
    fetched = ""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        fetched = f" (fetched {json.loads((target / MARKER_NAME).read_text())['fetched']})"
    say(f"{dataset.title} is already in {target}{fetched}; nothing to do.")
    return True


def _download(dataset, root, url, progress, retries, retry_delay, timeout, say) -> Path:
    """The archive in ``<root>/downloads``: an earlier download (verified again) or a new one."""
    folder = root / "downloads"
    final, part = folder / dataset.archive_name, folder / f"{dataset.archive_name}.part"
    if final.exists():
        say(f"Found an earlier download {final}; verifying it instead of downloading.")
        return final
    for failures in range(max(0, retries) + 1):
        try:
            folder.mkdir(exist_ok=True)
            _download_once(url, part, progress, timeout, say)
            break
        except _Interrupted as problem:
            have = part.stat().st_size if part.exists() else 0
            if failures >= retries:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # when nothing arrived
                kept = f"; {have / 1e6:.1f} MB are kept in {part}" if have else ""
                raise FetchError(f"download from {url} failed ({problem}){kept}. Check your "
                                 "internet connection or the address (--url), then run the same "
                                 "command again to resume; or use --archive PATH.") from None
            delay = retry_delay * 2 ** failures
            say(f"Connection problem ({problem}); "
                f"{f'resuming from {have / 1e6:.1f} MB' if have else 'retrying'} in {delay:.0f} s "
                f"(retry {failures + 1} of {retries}).")
            time.sleep(delay)
        except OSError as error:
            part.unlink(missing_ok=True)
            raise _disk_error(error, f"downloading {dataset.archive_name} into {folder}",
                              "the partial file was removed.") from None
    os.replace(part, final)
    return final


def _download_once(url: str, part: Path, progress: bool, timeout: float, say) -> None:
    """Fill ``part`` from ``url``, resuming after the bytes it already holds."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "labkit-fetch/1.0", "Accept-Encoding": "identity"}
    request = urllib.request.Request(url, headers={**headers, "Range": f"bytes={start}-"}
                                     if start else headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if start and response.status != 206:
                say("The server does not support resuming; downloading again from the start.")
                start = 0
            length = response.headers.get("Content-Length", "")
            total = start + int(length) if length.isdigit() else None
            _check_free_space(part.parent, (total or 0) - start, f"download {part.stem}")
            with open(part, "ab" if start else "wb") as handle, _bar(total, part.stem, progress,
                                                                      start) as bar:
                shutil.copyfileobj(CallbackIOWrapper(bar.update, response, "read"), handle)
    except urllib.error.HTTPError as error:
        if error.code == 416 and error.headers.get("Content-Range") == f"bytes */{start}":
            return  # the part file already holds the whole archive
        if error.code == 416:  # the part file no longer fits the server's file
            part.unlink()
            raise _Interrupted("the server refused to resume; starting over") from None
        if error.code in RETRIED_HTTP_CODES:
            raise _Interrupted(f"server answered {error.code} {error.reason}") from None
        raise FetchError(f"{url} answered {error.code} {error.reason}. Check the address "
                         "(--url), or download the archive some other way and pass --archive "
                         "PATH.") from None
    except NETWORK_ERRORS as error:
        raise _Interrupted(str(getattr(error, "reason", error)) or type(error).__name__) from None
    if total is not None and part.stat().st_size < total:
        raise _Interrupted(f"connection closed after {part.stat().st_size / 1e6:.1f} MB of "
                           f"{total / 1e6:.1f} MB")


def _verify(path: Path, algorithm: str, expected: str, progress: bool, say, downloaded: bool):
    """A FetchError when ``path``'s digest is not ``expected``; a mismatching download is moved
    aside to ``<name>.checksum-mismatch`` (the user's own archive stays where it is)."""
    say(f"Verifying the {algorithm} checksum of {path} ...")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle, _bar(path.stat().st_size, "verifying", progress) as bar:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    if digest.hexdigest() == expected:
        return
    problem = (f"checksum mismatch for {path}: expected {algorithm} {expected}, got "
               f"{digest.hexdigest()}. Nothing was extracted")
    if not downloaded:
        raise FetchError(f"{problem} and the file was left where it is. Ask for a fresh copy, or "
                         "pass --checksum ALGO:HEX if this archive is a known repackaging.")
    kept = path.with_name(path.name + ".checksum-mismatch")
    os.replace(path, kept)
    with open(kept, "rb") as handle:  # a moved address often answers with a web page
        web_page = handle.read(512).lstrip().lower().startswith((b"<!doctype html", b"<html"))
    hint = (" The server sent a web page, not the archive: the address has probably moved; "
            "find the current one and pass it with --url.") if web_page else ""
    raise FetchError(f"{problem}; the downloaded file was kept as {kept}.{hint} Delete it and run "
                     "again to download afresh; if you use a mirror that repackages the archive, "
                     "pass its checksum with --checksum ALGO:HEX.")


def _install(dataset: Dataset, root: Path, archive: Path, source: str, checksum: str,
             progress: bool, say, downloaded: bool) -> None:
    """Extract ``archive`` beside the target, then rename the dataset folder into place."""
    temporary = root / f".{dataset.folder_name}.extracting"
    shutil.rmtree(temporary, ignore_errors=True)  # left by a killed run
    try:
        temporary.mkdir()
        files = _extract(archive, temporary, progress, say)
        candidates = [temporary / dataset.folder_name, temporary,
                      *sorted(path for path in temporary.iterdir() if path.is_dir())]
        found = next((folder for folder in candidates if folder.is_dir() and any(folder.iterdir())
                      and all((folder / name).exists() for name in dataset.required)), None)
        if found is None:  # neither the official top folder nor (a repackaged mirror) the layout
            missing = [name for name in dataset.required
                       if not (temporary / dataset.folder_name / name).exists()]
            raise FetchError(f"{archive.name} does not have the expected layout: "
                             f"{dataset.folder_name}/ lacks {', '.join(missing) or 'its files'}. "
                             "Nothing was installed; check that the archive (or mirror) is the "
                             "right one.")
        atomic_write_json(found / MARKER_NAME, {
            "dataset": dataset.name, "source": source, "checksum": checksum, "files": files,
            "fetched": datetime.now(timezone.utc).isoformat(timespec="seconds")}).chmod(0o644)
        target = root / dataset.folder_name
        if target.exists():  # only a synthetic set gets here (see _already_present)
            aside, number = target.with_name(f"{target.name}.synthetic"), 1
            while aside.exists():
                number += 1
                aside = target.with_name(f"{target.name}.synthetic-{number}")
            os.rename(target, aside)
            say(f"The real set replaces the synthetic one, which was moved aside to {aside} "
                "(delete it when you no longer need it).")
        os.rename(found, target)
    except OSError as error:
        note = " The verified archive is kept, so no new download is needed." if downloaded else ""
        raise _disk_error(error, f"extracting {archive.name} into {root}",
                          f"the partial output was removed.{note}") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _extract(archive: Path, destination: Path, progress: bool, say) -> int:
    """Check every entry, then extract those that are not macOS junk; returns the file count."""
    try:
        with (zipfile.ZipFile(archive) if zipfile.is_zipfile(archive)
              else tarfile.open(archive, "r:*")) as bundle:
            is_zip, entries = isinstance(bundle, zipfile.ZipFile), []  # (member, bytes or None)
            for member in bundle.infolist() if is_zip else bundle.getmembers():
                if is_zip:
                    name, is_dir, size = member.filename, member.is_dir(), member.file_size
                    kind = stat.S_IFMT(member.external_attr >> 16)
                    plain = kind in (0, stat.S_IFREG, stat.S_IFDIR)
                else:
                    name, is_dir, size = member.name, member.isdir(), member.size
                    plain = member.isfile() or member.isdir()
                parts = [part for part in name.replace("\\", "/").split("/")
                         if part not in ("", ".")]
                problem = ("points outside the destination" if re.match(r"[/\\]|[A-Za-z]:", name)
                           or ".." in parts else None if plain else "is a link or a special file")
                if problem:
                    raise FetchError(f"refusing to extract {archive}: entry {name!r} {problem}. "
                                     "Nothing was extracted. The archive is not the official one: "
                                     "delete it and download again from the official address.")
                if parts and not any(part in ("__MACOSX", ".DS_Store") or part.startswith("._")
                                     for part in parts):
                    entries.append((member, None if is_dir else size))
            total = sum(size or 0 for _, size in entries)
            _check_free_space(destination, total, f"extract {archive.name}")
            say(f"Extracting {archive.name} ({total / 1e6:.1f} MB) ...")
            with _bar(total, "extracting", progress) as bar:
                for member, size in entries:
                    bundle.extract(member, destination, **({} if is_zip else TAR_OPTIONS))
                    bar.update(size or 0)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
        detail = (str(error) or type(error).__name__).splitlines()[0].rstrip(":")
        raise FetchError(f"{archive} is not a readable zip or tar archive ({detail}). Delete it "
                         "and run again, or check the file given to --archive.") from None
    return sum(size is not None for _, size in entries)


def _disk_error(error: OSError, doing: str, cleanup: str) -> FetchError:
    if error.errno in DISK_FULL:
        return FetchError(f"disk full while {doing}; {cleanup} Free some space (or choose a bigger "
                          "disk with --root) and run again.")
    return FetchError(f"could not write while {doing} ({error}); {cleanup}")


def _check_free_space(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise FetchError(f"not enough disk space to {what} in {folder}: {needed / 1e6:.1f} MB "
                         f"needed, {free / 1e6:.1f} MB free. Free some space or choose another "
                         "disk with --root, then run again.")


def _bar(total: int | None, description: str, enabled: bool, initial: int = 0) -> tqdm:
    """A tqdm bar counting bytes (a silent one when not ``enabled``)."""
    return tqdm(total=total, initial=initial, desc=description, unit="B", unit_scale=True,
                unit_divisor=1000, disable=not enabled, mininterval=0.5, leave=False)
