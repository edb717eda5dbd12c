"""Safe extraction of zip and tar archives (plain or compressed), for :mod:`labkit.fetch`.

Every entry is checked before anything is written: an absolute path, ``..``, a link, a device
file or a FIFO refuses the whole archive (:class:`ArchiveError`); macOS litter (``._*``,
``__MACOSX``, ``.DS_Store``) is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

CHUNK_SIZE = 1 << 20


class ArchiveError(RuntimeError):
    """An archive is unsafe or unreadable, or the disk is too small; the message says what to do."""


def extract_safely(archive: Path, destination: Path, progress: bool = False, say=print) -> int:
    """Check every entry of ``archive``, then write the files that are not junk under
    ``destination``; returns how many files were written."""
    with open(archive, "rb") as handle:
        is_zip = handle.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    try:
        with zipfile.ZipFile(archive) if is_zip else tarfile.open(archive, "r:*") as bundle:
            members = bundle.infolist() if is_zip else bundle.getmembers()
            entries = [entry for entry in (_entry(archive, member) for member in members) if entry]
            total = sum(size for _, is_dir, size, _ in entries if not is_dir)
            check_free_space(destination, total, f"extract {archive.name}")
            say(f"Extracting {archive.name} ({total / 1e6:.1f} MB) ...")
            with progress_bar(total, f"extracting {archive.name}", progress) as bar:
                for path, is_dir, _, member in entries:
                    target = destination.joinpath(*path.parts)
                    if is_dir:
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    real_folder = os.path.realpath(destination)  # the name checks should suffice
                    if os.path.commonpath([real_folder, os.path.realpath(target.parent)]) != real_folder:
                        _refuse(archive, str(path), "resolves outside the destination")
                    with (bundle.open if is_zip else bundle.extractfile)(member) as source, \
                            open(target, "wb") as handle:
                        for chunk in iter(lambda: source.read(CHUNK_SIZE), b""):
                            write_chunk(handle, chunk)
                            bar.update(len(chunk))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
        detail = str(error).splitlines()[0].rstrip(":") if str(error) else type(error).__name__
        raise ArchiveError(f"{archive} is not a readable zip or tar archive ({detail}). Delete it "
                           "and run again, or check the file given to --archive.") from None
    return sum(not is_dir for _, is_dir, _, _ in entries)


def _entry(archive: Path, member):
    """``(path, is_dir, size, member)`` of a zip or tar member; None for junk and empty names;
    an ArchiveError for an absolute path, ``..``, a link, a device file or a FIFO."""
    name = member.filename if isinstance(member, zipfile.ZipInfo) else member.name
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"[A-Za-z]:", normalised):
        _refuse(archive, name, "has an absolute path")
    parts = [part for part in normalised.split("/") if part not in ("", ".")]
    if ".." in parts:
        _refuse(archive, name, "points outside the destination ('..')")
    if not parts or any(part in ("__MACOSX", ".DS_Store") or part.startswith("._") for part in parts):
        return None
    if isinstance(member, zipfile.ZipInfo):
        kind = stat.S_IFMT(member.external_attr >> 16)
        if kind == stat.S_IFLNK:
            _refuse(archive, name, "is a symbolic link")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            _refuse(archive, name, "is a device file, FIFO or socket")
        return PurePosixPath(*parts), member.is_dir(), 0 if member.is_dir() else member.file_size, member
    if member.issym() or member.islnk():
        _refuse(archive, name, f"is a link (to {member.linkname!r})")
    if member.ischr() or member.isblk() or member.isfifo():
        _refuse(archive, name, "is a device file or FIFO")
    if not (member.isdir() or member.isfile()):
        _refuse(archive, name, "has an unsupported entry type")
    return PurePosixPath(*parts), member.isdir(), 0 if member.isdir() else member.size, member


def _refuse(archive: Path, name: str, problem: str):
    raise ArchiveError(f"refusing to extract {archive}: entry {name!r} {problem}. Nothing was "
                       "extracted. The archive is not the official one: delete it and download "
                       "again from the official address.")


def write_chunk(handle, chunk: bytes) -> None:
    """Every byte :mod:`labkit.fetch` downloads or extracts is written here (tests simulate a
    full disk)."""
    handle.write(chunk)


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """An ArchiveError when ``folder``'s disk has less than ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ArchiveError(f"not enough disk space to {what} in {folder}: {needed / 1e6:.1f} MB "
                           f"needed, {free / 1e6:.1f} MB free. Free some space or choose another "
                           "disk with --root, then run again.")


def progress_bar(total: int | None, description: str, enabled: bool, initial: int = 0):
    """A tqdm bar counting bytes (a silent one when not ``enabled``)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="B", unit_scale=True,
                unit_divisor=1000, disable=not enabled, mininterval=0.5, leave=False)
