"""``deploy/class_results.py``: the room's runs as one page; bad files are listed, not fatal."""

from __future__ import annotations

import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
import class_results  # noqa: E402

from labkit.runs import write_metrics


def record(lab: str, dice: float, device: str = "cpu", **extra) -> dict:
    return {"lab": lab, "profile": "cpu", "device": device, "data_source": "synthetic",
            "epochs": 10, "wall_time_s": 90.0, "train_dice": dice, "validation_dice": dice,
            "test_dice": dice - 0.01, "per_case": [], **extra}


class Table(HTMLParser):
    """The body rows of the runs table and the list items of ``ul.skipped``, as text."""

    def __init__(self):
        super().__init__()
        self.rows, self.skipped, self.images, self._where, self._cell = [], [], 0, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img" and "plot" in attrs.get("class", ""):
            self.images += 1
        if tag == "tbody":
            self._where = "runs"
        if tag == "ul" and attrs.get("class") == "skipped":
            self._where = "skipped"
        if tag == "tr" and self._where == "runs":
            self.rows.append([])
        if tag in ("td", "li"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self._where == "runs":
            self.rows[-1].append(self._cell)
        if tag == "li" and self._where == "skipped":
            self.skipped.append(self._cell)
        if tag in ("td", "li"):
            self._cell = None
        if tag in ("tbody", "ul"):
            self._where = None


def make_room(homes: Path) -> None:
    """Two students' run folders as the hub lays them out, plus files the board must survive."""
    write_metrics(homes / "ann" / "runs" / "vnet-cpu-baseline", record("vnet", 0.85))
    write_metrics(homes / "ann" / "runs" / "vnet-cpu-batchnorm", record("vnet", 0.80))
    write_metrics(homes / "ben" / "runs" / "cfcm-cpu-baseline",
                  record("cfcm", 0.97, device="/GPU:0", model="CFCM34"))
    broken = {"cut-short": '{"lab": "vnet", ', "a-list": "[1, 2]", "other-tool": '{"loss": 0.1}',
              "text-dice": json.dumps(record("vnet", 0.5) | {"validation_dice": "high"})}
    for name, text in broken.items():
        (homes / "ben" / "runs" / name).mkdir(parents=True)
        (homes / "ben" / "runs" / name / "metrics.json").write_text(text)
    (homes / "ben" / "runs" / "binary").mkdir()
    (homes / "ben" / "runs" / "binary" / "metrics.json").write_bytes(b"\xff\xfe\x00")
    (homes / "ben" / ".cache" / "x").mkdir(parents=True)  # hidden folders are not searched
    (homes / "ben" / ".cache" / "x" / "metrics.json").write_text("{}")


def test_board_shows_every_run_and_lists_what_it_skipped(tmp_path, capsys):
    homes = tmp_path / "homes"
    make_room(homes)
    out = tmp_path / "board.html"
    assert class_results.main([str(homes), str(tmp_path / "nowhere"), "--out", str(out)]) == 0
    page = Table()
    page.feed(out.read_text())
    assert [row[:3] for row in page.rows] == [["ben", "cfcm", "CFCM34 baseline"],
                                              ["ann", "vnet", "baseline"],
                                              ["ann", "vnet", "batchnorm"]]
    assert page.rows[0][4] == "gpu" and page.rows[1][7:] == ["0.850", "0.840"]
    assert page.images == 1
    reasons = {Path(item.split(":")[0]).parent.name or item.split(":")[0]: item for item in page.skipped}
    assert "not valid JSON" in reasons["cut-short"]
    assert "not a labkit run record" in reasons["a-list"] and "not a labkit run" in reasons["other-tool"]
    assert "validation_dice is 'high', not a number" in reasons["text-dice"]
    assert "cannot be read" in reasons["binary"]
    assert any("nowhere" in item and "no such file or folder" in item for item in page.skipped)
    assert len(page.skipped) == 6
    printed = capsys.readouterr()
    assert "3 runs, 6 skipped" in printed.out and "skipped" in printed.err


def test_board_with_no_runs_says_so_and_fails(tmp_path):
    out = tmp_path / "board.html"
    (tmp_path / "empty").mkdir()
    assert class_results.main([str(tmp_path / "empty"), "--out", str(out)]) == 1
    assert "0 runs from 0 students" in out.read_text() and "No runs yet" in out.read_text()


def test_student_and_variant_come_from_the_folders(tmp_path):
    path = write_metrics(tmp_path / "runs" / "vnet-gpu-groupnorm-lr3", record("vnet", 0.9) |
                         {"profile": "gpu", "device": "cuda:1"})
    run = class_results.read_run(path)
    assert (run.student, run.variant, run.device) == (tmp_path.name, "groupnorm-lr3", "gpu")
    assert run.dice == 0.9 - 0.01 and run.minutes == 1.5


@pytest.mark.parametrize("module", ["labkit.class_results", "labkit.hub"])
def test_the_module_names_start_the_deploy_scripts(module):
    """``python -m labkit.hub`` / ``labkit.class_results`` (the names issue 18 documents) run deploy/."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"usage: deploy/{module.split('.')[1]}.py" in done.stdout
