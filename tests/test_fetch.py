"""data_scripts/fetching.py and the two fetch scripts, offline.

Small fake archives with the official layouts are served from a local threaded HTTP server
(with Range support; it can drop the connection mid-file or ignore Range). The expected
checksum is computed here and passed through ``--checksum``, the path the command line uses.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import json
import random
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data_scripts"))
import fetching as fetch_module  # noqa: E402
from fetching import FetchBusy, FetchError, fetch, lock_path, parse_checksum  # noqa: E402

from labkit.paths import LUNG_DIR, PROSTATE_DIR, SYNTHETIC_MARKER

REPOSITORY = Path(__file__).resolve().parents[1]
PROSTATE_FILES = {
    "Task05_Prostate/dataset.json": b'{"name": "Prostate"}',
    "Task05_Prostate/imagesTr/prostate_00.nii.gz": 3000,
    "Task05_Prostate/imagesTr/prostate_01.nii.gz": 3000,
    "Task05_Prostate/labelsTr/prostate_00.nii.gz": 1000,
    "Task05_Prostate/labelsTr/prostate_01.nii.gz": 1000,
    "Task05_Prostate/imagesTs/prostate_03.nii.gz": 3000,
}
PROSTATE_JUNK = ["Task05_Prostate/._dataset.json", "Task05_Prostate/imagesTr/._prostate_00.nii.gz"]
MONTGOMERY_FILES = {
    "MontgomerySet/CXR_png/MCUCXR_0001_0.png": 4000,
    "MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png": 500,
    "MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png": 500,
    "MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt": b"Patient's Sex: F\n",
}
MONTGOMERY_JUNK = ["__MACOSX/MontgomerySet/CXR_png/._MCUCXR_0001_0.png", "MontgomerySet/.DS_Store"]


# ---------------------------------------------------------------- helpers


def load_script(name):
    """Import ``data_scripts/<name>.py`` as a module (its ``main`` is the CLI)."""
    spec = importlib.util.spec_from_file_location(name, REPOSITORY / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PROSTATE = load_script("fetch_prostate").PROSTATE
MONTGOMERY = load_script("fetch_montgomery").MONTGOMERY


def contents(files, seed=0):
    """Sizes become seeded random bytes, so every archive is reproducible."""
    generator = random.Random(seed)
    return {name: data if isinstance(data, bytes) else generator.randbytes(data)
            for name, data in files.items()}


def make_tar(path, files, extra=()):
    """A tar with ``files`` ({name: bytes}) and extra raw TarInfo members (malicious ones)."""
    with tarfile.open(path, "w") as bundle:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        for info in extra:
            bundle.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
    return path


def make_zip(path, files, extra=()):
    """A zip with ``files`` and extra (ZipInfo, bytes) entries."""
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
        for info, data in extra:
            bundle.writestr(info, data)
    return path


def md5(path):
    return "md5:" + hashlib.md5(Path(path).read_bytes()).hexdigest()


def sha256(path):
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree(folder):
    """Every path under ``folder``, relative, as posix strings."""
    return sorted(path.relative_to(folder).as_posix() for path in Path(folder).rglob("*"))


class ArchiveServer(ThreadingHTTPServer):
    """Serves ``files`` ({url path: bytes}); records each request's path and Range header."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = {}
        self.requests = []
        self.drop_after = None  # close the connection after this many bytes, once
        self.honour_range = True

    def url(self, name):
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = self._range_start(len(data))
        if start is None:
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if server.drop_after is not None:
            body, server.drop_after = body[: server.drop_after], None
            self.close_connection = True
        self.wfile.write(body)

    def _range_start(self, size):
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if not match or not self.server.honour_range:
            return 0
        start = int(match.group(1))
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return start

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                     "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    archive_server = ArchiveServer()
    thread = threading.Thread(target=archive_server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield archive_server
    archive_server.shutdown()
    archive_server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def prostate_tar(tmp_path):
    files = contents(PROSTATE_FILES)
    junk = {name: b"apple double" for name in PROSTATE_JUNK}
    return make_tar(tmp_path / "Task05_Prostate.tar", {**files, **junk}), files


@pytest.fixture
def montgomery_zip(tmp_path):
    files = contents(MONTGOMERY_FILES, seed=1)
    junk = {name: b"apple double" for name in MONTGOMERY_JUNK}
    return make_zip(tmp_path / "NLM-MontgomeryCXRSet.zip", {**files, **junk}), files


def run_cli(dataset_module, *argv):
    return load_script(dataset_module).main(list(argv) + ["--quiet"])


def assert_extracted(root, files):
    for name, data in files.items():
        assert (root / name).read_bytes() == data


def assert_nothing_extracted(root, folder_name):
    assert not (root / folder_name).exists()
    assert not list(root.glob(f".{folder_name}.extracting*"))


# ---------------------------------------------------------------- happy paths


def test_prostate_tar_through_server(server, prostate_tar, tmp_path, capsys):
    archive, files = prostate_tar
    server.files["Task05_Prostate.tar"] = archive.read_bytes()
    root = tmp_path / "data"

    status = run_cli("fetch_prostate", "--root", str(root), "--checksum", md5(archive),
                     "--url", server.url("Task05_Prostate.tar"))

    assert status == 0
    assert_extracted(root, files)
    dataset = root / PROSTATE_DIR
    assert not any(name.startswith("._") for name in tree(dataset))
    assert (dataset / fetch_module.MARKER_NAME).exists()
    assert not (root / "downloads" / "Task05_Prostate.tar").exists()  # removed after extraction
    output = capsys.readouterr().out
    assert "CC-BY-SA 4.0" in output and "Antonelli" in output


def test_montgomery_zip_through_server_into_labkit_data(server, montgomery_zip, tmp_path,
                                                          monkeypatch, capsys):
    archive, files = montgomery_zip
    server.files["mirror/NLM-MontgomeryCXRSet.zip"] = archive.read_bytes()
    root = tmp_path / "labkit-data"
    monkeypatch.setenv("LABKIT_DATA", str(root))

    status = run_cli("fetch_montgomery", "--checksum", sha256(archive),
                     "--url", server.url("mirror/NLM-MontgomeryCXRSet.zip"))

    assert status == 0
    assert_extracted(root, files)
    marker = json.loads((root / LUNG_DIR / fetch_module.MARKER_NAME).read_text())
    assert marker["files"] == len(files)  # neither __MACOSX nor .DS_Store was written
    assert not (root / LUNG_DIR / ".DS_Store").exists()
    output = capsys.readouterr().out
    assert "Jaeger" in output and "Quantitative Imaging in Medicine and Surgery 4(6)" in output
    assert "redistribution" in output


def test_second_run_is_idempotent_without_any_request(server, prostate_tar, tmp_path, capsys):
    archive, files = prostate_tar
    server.files["Task05_Prostate.tar"] = archive.read_bytes()
    root = tmp_path / "data"
    arguments = ["--root", str(root), "--checksum", md5(archive),
                 "--url", server.url("Task05_Prostate.tar")]
    assert run_cli("fetch_prostate", *arguments) == 0
    requests_after_first_run = len(server.requests)
    capsys.readouterr()

    assert run_cli("fetch_prostate", *arguments) == 0

    assert len(server.requests) == requests_after_first_run == 1
    assert "already in" in capsys.readouterr().out
    assert_extracted(root, files)


def test_official_records_match_the_readers_layout():
    assert PROSTATE.folder_name == PROSTATE_DIR and MONTGOMERY.folder_name == LUNG_DIR
    assert (PROSTATE.checksum_algorithm, len(PROSTATE.checksum)) == ("md5", 32)
    assert (MONTGOMERY.checksum_algorithm, len(MONTGOMERY.checksum)) == ("sha256", 64)
    assert not MONTGOMERY.redistributable and PROSTATE.redistributable


# ---------------------------------------------------------------- resume


def test_resume_after_dropped_connection_on_the_next_run(server, prostate_tar, tmp_path, capsys):
    archive, files = prostate_tar
    data = archive.read_bytes()
    server.files["Task05_Prostate.tar"] = data
    server.drop_after = 5000
    root = tmp_path / "data"
    arguments = ["--root", str(root), "--checksum", md5(archive),
                 "--url", server.url("Task05_Prostate.tar")]

    assert run_cli("fetch_prostate", *arguments, "--retries", "0") == 1
    assert "run the same command again to resume" in capsys.readouterr().err.lower()
    part = root / "downloads" / "Task05_Prostate.tar.part"
    assert part.stat().st_size == 5000
    assert_nothing_extracted(root, PROSTATE_DIR)

    assert run_cli("fetch_prostate", *arguments) == 0

    assert server.requests == [("/Task05_Prostate.tar", None),
                               ("/Task05_Prostate.tar", "bytes=5000-")]
    assert_extracted(root, files)
    assert not part.exists()


def test_resume_within_one_run(server, montgomery_zip, tmp_path):
    archive, files = montgomery_zip
    server.files["NLM-MontgomeryCXRSet.zip"] = archive.read_bytes()
    server.drop_after = 3000
    messages = []

    result = fetch(MONTGOMERY, tmp_path, url=server.url("NLM-MontgomeryCXRSet.zip"),
                   checksum=sha256(archive), progress=False, retry_delay=0, say=messages.append)

    assert result.action == "fetched"
    assert [request[1] for request in server.requests] == [None, "bytes=3000-"]
    assert any("resuming from" in message for message in messages)
    assert_extracted(tmp_path, files)


def test_server_ignoring_range_restarts_cleanly(server, prostate_tar, tmp_path):
    archive, files = prostate_tar
    server.files["Task05_Prostate.tar"] = archive.read_bytes()
    server.honour_range = False
    part = tmp_path / "downloads" / "Task05_Prostate.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from an older attempt")
    messages = []

    fetch(PROSTATE, tmp_path, url=server.url("Task05_Prostate.tar"), checksum=md5(archive),
          progress=False, say=messages.append)

    assert server.requests[0][1] == f"bytes={len(b'stale bytes from an older attempt')}-"
    assert any("does not support resuming" in message for message in messages)
    assert_extracted(tmp_path, files)


def test_complete_part_file_is_not_downloaded_again(server, prostate_tar, tmp_path):
    archive, files = prostate_tar
    data = archive.read_bytes()
    server.files["Task05_Prostate.tar"] = data
    part = tmp_path / "downloads" / "Task05_Prostate.tar.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data)  # a run killed after the last byte, before the rename

    fetch(PROSTATE, tmp_path, url=server.url("Task05_Prostate.tar"), checksum=md5(archive),
          progress=False, say=lambda message: None)

    assert server.requests == [("/Task05_Prostate.tar", f"bytes={len(data)}-")]  # answered 416
    assert_extracted(tmp_path, files)


def test_http_error_is_a_plain_fetch_error(server, tmp_path):
    with pytest.raises(FetchError, match=r"answered 404 .*--url"):
        fetch(PROSTATE, tmp_path, url=server.url("missing.tar"), progress=False, say=print)
    assert_nothing_extracted(tmp_path, PROSTATE_DIR)


# ---------------------------------------------------------------- checksums


def test_wrong_checksum_extracts_nothing_and_keeps_the_file_aside(server, prostate_tar, tmp_path,
                                                                    capsys):
    archive, _ = prostate_tar
    server.files["Task05_Prostate.tar"] = archive.read_bytes()
    wrong = "md5:" + "0" * 32

    status = run_cli("fetch_prostate", "--root", str(tmp_path / "data"), "--checksum", wrong,
                     "--url", server.url("Task05_Prostate.tar"))

    assert status == 1
    error = capsys.readouterr().err
    kept = tmp_path / "data" / "downloads" / "Task05_Prostate.tar.checksum-mismatch"
    assert str(kept) in error and "checksum mismatch" in error and "Traceback" not in error
    assert kept.read_bytes() == archive.read_bytes()
    assert_nothing_extracted(tmp_path / "data", PROSTATE_DIR)


def test_moved_address_serving_a_web_page_gets_a_hint(server, tmp_path):
    server.files["Task05_Prostate.tar"] = b"<!DOCTYPE html><html><body>We moved!</body></html>"
    with pytest.raises(FetchError, match="sent a web page.*--url"):
        fetch(PROSTATE, tmp_path, url=server.url("Task05_Prostate.tar"), progress=False,
              say=lambda message: None)
    assert_nothing_extracted(tmp_path, PROSTATE_DIR)


def test_script_prints_errors_without_traceback(tmp_path):
    missing = tmp_path / "nowhere.tar"
    completed = subprocess.run(
        [sys.executable, str(REPOSITORY / "data_scripts" / "fetch_prostate.py"), "--root",
         str(tmp_path), "--archive", str(missing), "--quiet"],
        capture_output=True, text=True, timeout=60)
    assert completed.returncode == 1
    assert str(missing) in completed.stderr and "Traceback" not in completed.stderr


def test_parse_checksum_forms():
    assert parse_checksum("MD5:" + "A" * 32) == ("md5", "a" * 32)
    assert parse_checksum("b" * 64) == ("sha256", "b" * 64)
    assert parse_checksum("sha-256:" + "c" * 64) == ("sha256", "c" * 64)
    with pytest.raises(FetchError, match="ALGORITHM:HEX"):
        parse_checksum("1234")
    with pytest.raises(FetchError, match="not a valid md5"):
        parse_checksum("md5:" + "z" * 32)


# ---------------------------------------------------------------- --archive


def test_archive_from_usb_stick(prostate_tar, tmp_path):
    archive, files = prostate_tar
    root = tmp_path / "data"

    assert run_cli("fetch_prostate", "--root", str(root), "--archive", str(archive),
                   "--checksum", md5(archive)) == 0

    assert_extracted(root, files)
    assert archive.exists()  # the user's own file is never moved or deleted


def test_archive_with_wrong_checksum_is_left_in_place(montgomery_zip, tmp_path, capsys):
    archive, _ = montgomery_zip
    before = archive.read_bytes()

    status = run_cli("fetch_montgomery", "--root", str(tmp_path / "data"), "--archive",
                     str(archive))  # the official checksum cannot match a fake archive

    assert status == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert archive.read_bytes() == before
    assert_nothing_extracted(tmp_path / "data", LUNG_DIR)


# ---------------------------------------------------------------- malicious archives


def tar_member(name, kind=tarfile.REGTYPE, linkname="", size=0):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, size
    return info


MALICIOUS_TAR_MEMBERS = {
    "absolute path": lambda outside: tar_member(str(outside / "evil.txt"), size=4),
    "dot-dot": lambda outside: tar_member("Task05_Prostate/../../outside/evil.txt", size=4),
    "symlink escaping": lambda outside: tar_member("Task05_Prostate/escape", tarfile.SYMTYPE,
                                                   linkname=str(outside)),
    "hard link": lambda outside: tar_member("Task05_Prostate/passwd", tarfile.LNKTYPE,
                                            linkname="/etc/passwd"),
    "fifo": lambda outside: tar_member("Task05_Prostate/pipe", tarfile.FIFOTYPE),
    "character device": lambda outside: tar_member("Task05_Prostate/null", tarfile.CHRTYPE),
}


@pytest.mark.parametrize("kind", sorted(MALICIOUS_TAR_MEMBERS))
def test_malicious_tar_is_refused(kind, tmp_path):
    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    files = contents(PROSTATE_FILES)
    evil = MALICIOUS_TAR_MEMBERS[kind](outside)
    archive = make_tar(tmp_path / "evil.tar", files, extra=[evil])

    with pytest.raises(FetchError, match="refusing to extract .*Nothing was extracted"):
        fetch(PROSTATE, root, archive=archive, checksum=md5(archive), progress=False,
              say=lambda message: None)

    assert tree(outside) == []
    assert_nothing_extracted(root, PROSTATE_DIR)
    assert tree(root) == [lock_path(root, PROSTATE).name]


def zip_entry(name, mode=0o100644):
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


@pytest.mark.parametrize("kind", ["absolute path", "dot-dot", "backslash dot-dot", "symlink",
                                  "fifo"])
def test_malicious_zip_is_refused(kind, tmp_path):
    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    evil = {
        "absolute path": (zip_entry(str(outside / "evil.txt")), b"evil"),
        "dot-dot": (zip_entry("MontgomerySet/../../outside/evil.txt"), b"evil"),
        "backslash dot-dot": (zip_entry("MontgomerySet\\..\\..\\outside\\evil.txt"), b"evil"),
        "symlink": (zip_entry("MontgomerySet/escape", stat.S_IFLNK | 0o777), str(outside).encode()),
        "fifo": (zip_entry("MontgomerySet/pipe", stat.S_IFIFO | 0o644), b""),
    }[kind]
    archive = make_zip(tmp_path / "evil.zip", contents(MONTGOMERY_FILES), extra=[evil])

    with pytest.raises(FetchError, match="refusing to extract"):
        fetch(MONTGOMERY, root, archive=archive, checksum=sha256(archive), progress=False,
              say=lambda message: None)

    assert tree(outside) == []
    assert_nothing_extracted(root, LUNG_DIR)


def test_archive_without_the_expected_layout_installs_nothing(tmp_path):
    archive = make_tar(tmp_path / "other.tar", {"Something/else.txt": b"hello"})
    with pytest.raises(FetchError, match="expected layout.*dataset.json"):
        fetch(PROSTATE, tmp_path / "data", archive=archive, checksum=md5(archive),
              progress=False, say=lambda message: None)
    assert_nothing_extracted(tmp_path / "data", PROSTATE_DIR)


# ---------------------------------------------------------------- existing copies


def test_real_set_replaces_a_synthetic_one(prostate_tar, tmp_path, capsys):
    archive, files = prostate_tar
    root = tmp_path / "data"
    synthetic = root / PROSTATE_DIR
    (synthetic / "imagesTr").mkdir(parents=True)
    (synthetic / SYNTHETIC_MARKER).write_text("made by make_phantoms.py\n")

    assert run_cli("fetch_prostate", "--root", str(root), "--archive", str(archive),
                   "--checksum", md5(archive)) == 0

    assert_extracted(root, files)
    assert not (root / PROSTATE_DIR / SYNTHETIC_MARKER).exists()
    assert (root / f"{PROSTATE_DIR}.synthetic" / SYNTHETIC_MARKER).exists()
    assert "moved aside" in capsys.readouterr().out


def test_incomplete_existing_folder_is_not_overwritten(prostate_tar, tmp_path):
    archive, _ = prostate_tar
    existing = tmp_path / PROSTATE_DIR / "imagesTr"
    existing.mkdir(parents=True)
    with pytest.raises(FetchError, match="incomplete .*missing: dataset.json, labelsTr"):
        fetch(PROSTATE, tmp_path, archive=archive, checksum=md5(archive), progress=False,
              say=lambda message: None)
    assert tree(tmp_path / PROSTATE_DIR) == ["imagesTr"]


def test_existing_copy_not_fetched_by_labkit_is_left_alone(tmp_path, capsys):
    dataset = tmp_path / LUNG_DIR
    for name in MONTGOMERY.required:
        (dataset / name).mkdir(parents=True)

    assert run_cli("fetch_montgomery", "--root", str(tmp_path)) == 0

    assert "leaving it as it is" in capsys.readouterr().out
    assert not lock_path(tmp_path, MONTGOMERY).exists()  # no write needed to find it complete
    assert tree(dataset) == ["CXR_png", "ManualMask", "ManualMask/leftMask", "ManualMask/rightMask"]


def test_keep_archive_and_stale_temporary_cleanup(server, montgomery_zip, tmp_path):
    archive, files = montgomery_zip
    server.files["NLM-MontgomeryCXRSet.zip"] = archive.read_bytes()
    stale = tmp_path / f".{LUNG_DIR}.extracting" / LUNG_DIR
    stale.mkdir(parents=True)  # left behind by a run that was killed mid-extraction

    assert run_cli("fetch_montgomery", "--root", str(tmp_path), "--keep-archive", "--checksum",
                   sha256(archive), "--url", server.url("NLM-MontgomeryCXRSet.zip")) == 0

    assert not stale.parent.exists()
    kept = tmp_path / "downloads" / "NLM-MontgomeryCXRSet.zip"
    assert kept.read_bytes() == archive.read_bytes()
    assert_extracted(tmp_path, files)


# ---------------------------------------------------------------- lock


def test_no_wait_exits_politely_while_another_run_holds_the_lock(server, prostate_tar, tmp_path,
                                                                  capsys):
    import fcntl

    archive, _ = prostate_tar
    server.files["Task05_Prostate.tar"] = archive.read_bytes()
    root = tmp_path / "data"
    root.mkdir()
    with open(lock_path(root, PROSTATE), "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        status = run_cli("fetch_prostate", "--root", str(root), "--no-wait", "--checksum",
                         md5(archive), "--url", server.url("Task05_Prostate.tar"))
    assert status == fetch_module.BUSY_EXIT_CODE
    error = capsys.readouterr().err
    assert "another fetch" in error and "Traceback" not in error
    assert server.requests == []


def test_second_run_waits_for_the_lock_then_proceeds(server, prostate_tar, tmp_path):
    import fcntl

    archive, files = prostate_tar
    server.files["Task05_Prostate.tar"] = archive.read_bytes()
    root = tmp_path / "data"
    root.mkdir()
    messages, outcome = [], {}

    def second_run():
        try:
            outcome["result"] = fetch(PROSTATE, root, url=server.url("Task05_Prostate.tar"),
                                      checksum=md5(archive), progress=False, say=messages.append)
        except FetchError as error:
            outcome["error"] = error

    with open(lock_path(root, PROSTATE), "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        thread = threading.Thread(target=second_run)
        thread.start()
        deadline = time.monotonic() + 10
        while not any("Waiting" in message for message in messages) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.requests == []  # blocked: nothing downloaded while the lock is held
        fcntl.flock(holder, fcntl.LOCK_UN)
    thread.join(timeout=20)

    assert outcome.get("result") is not None, outcome.get("error")
    assert len(server.requests) == 1
    assert_extracted(root, files)


def test_busy_is_a_fetch_error():
    assert issubclass(FetchBusy, FetchError) and issubclass(FetchError, RuntimeError)


# ---------------------------------------------------------------- disk full


COPY = shutil.copyfileobj


def disk_full_after(calls_allowed):
    """A ``shutil.copyfileobj`` (what writes a download, and each file unzipped) that finds the
    disk full after ``calls_allowed`` calls."""
    state = {"calls": 0}

    def write(source, target, *args):
        state["calls"] += 1
        if state["calls"] > calls_allowed:
            raise OSError(errno.ENOSPC, "No space left on device")
        COPY(source, target, *args)

    return write


def test_disk_full_during_download(server, prostate_tar, tmp_path, monkeypatch, capsys):
    archive, _ = prostate_tar
    server.files["Task05_Prostate.tar"] = archive.read_bytes()
    monkeypatch.setattr(shutil, "copyfileobj", disk_full_after(0))
    root = tmp_path / "data"

    status = run_cli("fetch_prostate", "--root", str(root), "--checksum", md5(archive),
                     "--url", server.url("Task05_Prostate.tar"))

    assert status == 1
    assert "disk full while downloading" in capsys.readouterr().err
    assert not (root / "downloads" / "Task05_Prostate.tar.part").exists()
    assert_nothing_extracted(root, PROSTATE_DIR)


def test_disk_full_during_extraction(server, montgomery_zip, tmp_path, monkeypatch):
    archive, files = montgomery_zip
    server.files["NLM-MontgomeryCXRSet.zip"] = archive.read_bytes()
    monkeypatch.setattr(shutil, "copyfileobj", disk_full_after(2))  # the download, 1 file

    with pytest.raises(FetchError, match="disk full while extracting .*partial output was removed"):
        fetch(MONTGOMERY, tmp_path, url=server.url("NLM-MontgomeryCXRSet.zip"),
              checksum=sha256(archive), progress=False, say=lambda message: None)

    assert_nothing_extracted(tmp_path, LUNG_DIR)
    kept = tmp_path / "downloads" / "NLM-MontgomeryCXRSet.zip"
    assert kept.read_bytes() == archive.read_bytes()  # verified archive kept for the next run

    monkeypatch.setattr(shutil, "copyfileobj", COPY)
    fetch(MONTGOMERY, tmp_path, url=server.url("NLM-MontgomeryCXRSet.zip"),
          checksum=sha256(archive), progress=False, say=lambda message: None)
    assert len(server.requests) == 1  # the second run reused the verified archive
    assert_extracted(tmp_path, files)
