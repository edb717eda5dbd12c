"""The benchmark harness (``benchmarks/``): runs end to end on tiny sizes and writes its reports.

No timing is asserted here: speed targets live in ``benchmarks/results``, not in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import report  # noqa: E402
import run_all  # noqa: E402
import seed_reference  # noqa: E402

from labkit.data.transforms import crop_or_pad, crop_or_pad_start  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.torch
def test_quick_run_writes_json_markdown_and_png(tiny_prostate_root, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("nilearn")
    pytest.importorskip("monai")
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--quick", "--only", "data,vnet",
         "--only", "gpu,notebooks", "--data-root", str(tiny_prostate_root), "--out", str(out)],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((out / "latest.json").read_text())
    assert results["quick"] is True
    assert results["machine"]["cores"] >= 1 and "torch" in results["machine"]["libraries"]
    sections = results["sections"]
    assert set(sections) == {"data", "vnet", "gpu", "notebooks"}
    data = sections["data"]
    assert data["status"] == "measured"
    setting = data["settings"][0]
    assert set(setting["timings"]) >= {"seed", "labkit_cold", "labkit_cold_1_worker", "labkit_cached"}
    for timing in setting["timings"].values():
        assert 0 < timing["min_s"] <= timing["median_s"]
    # the two pipelines put the gland in the same place, also for an oblique copy of a case
    assert setting["geometry"]["label_dice_min"] >= 0.99
    assert any("oblique" in row["orientation"] for row in setting["geometry"]["cases"])
    overhead = data["epoch_overhead"]
    assert set(overhead["timings"]) == {"training_epoch", "training_epoch_in_turn", "training_epoch_ndimage_affine",
                                        "training_epoch_premade", "iterator_work_no_network"}
    assert set(overhead["ways"]) == {"training_epoch", "training_epoch_in_turn", "training_epoch_ndimage_affine"}
    assert 0 < overhead["overhead_fraction"] <= overhead["overhead_fraction_max"] < 1  # clocked waits
    assert -1 < overhead["paired_difference_fraction_median"] < 1  # a difference of two timings: may be < 0
    assert 0 < overhead["iterator_work_fraction"] < 1
    assert "Iterator overhead, smoke profile" in (out / "latest.md").read_text()
    vnet = sections["vnet"]
    assert vnet["status"] == "measured"
    assert {"seed", "seed_nn_groupnorm", "monai"} <= set(vnet["networks"])
    # swapping only the normalisation layer keeps the parameter count
    assert vnet["networks"]["seed"]["parameters"] == vnet["networks"]["seed_nn_groupnorm"]["parameters"]
    assert sections["notebooks"]["status"] == "not measured"
    assert sections["gpu"]["status"] in ("measured", "not measured")

    text = (out / "latest.md").read_text()
    for heading in ("## Targets", "## 1. Data preparation", "## 2. Lab 1 network", "## 6. Learning"):
        assert heading in text
    assert "not measured: this section was not run" in text  # cfcm and threads were left out
    assert (out / "learning_curves.png").read_bytes().startswith(PNG_MAGIC)


def test_only_keeps_earlier_sections_of_the_same_machine(tmp_path):
    machine = {"cpu": "test cpu", "cores": 2, "gpus": []}
    (tmp_path / "latest.json").write_text(json.dumps(
        {"machine": machine, "quick": False, "sections": {"vnet": {"status": "measured"}}}))
    assert run_all._earlier_sections(tmp_path, machine, quick=False) == {"vnet": {"status": "measured"}}
    assert run_all._earlier_sections(tmp_path, machine, quick=True) == {}
    assert run_all._earlier_sections(tmp_path, dict(machine, cores=16), quick=False) == {}


def test_unknown_section_is_refused(capsys):
    with pytest.raises(SystemExit):
        run_all.parse_arguments(["--only", "data,speed"])
    assert "unknown section(s) speed" in capsys.readouterr().err


def test_section_config_passes_options_through(tmp_path):
    args = run_all.parse_arguments(["--repeats", "4", "--notebooks", "smoke", "--data-root", str(tmp_path)])
    assert run_all.section_config("notebooks", args)["profiles"] == ["smoke"]
    assert run_all.section_config("data", args)["repeats"] == 4
    assert run_all.section_config("data", args)["data_root"] == str(tmp_path.resolve())
    defaults = run_all.parse_arguments([])
    assert run_all.section_config("vnet", defaults)["repeats"] == run_all.DEFAULT_REPEATS["vnet"]


def _results(sections: dict) -> dict:
    return {"machine": {"cpu": "test cpu", "cores": 2, "gpus": [], "python": "3.11",
                        "libraries": {"numpy": "2"}},
            "quick": False, "sections": sections, "finished_at": "2026-01-01T00:00:00Z"}


def _notebook_run(lab, board, wall, epoch_s, curve, share=0.01):
    return {"lab": lab, "notebook": f"{lab}.ipynb", "profile": "cpu", "board": board, "status": "ok",
            "wall_time_s": wall, "epoch_s_median": epoch_s, "curve": curve, "board_updates": 60,
            "board_draws": 25 if board == "on" else 0, "board_drawing_s": 3.0, "board_share": share}


CURVE = [{"epoch": 1, "time_s": 30.0, "train_dice": 0.5, "validation_dice": 0.6},
         {"epoch": 2, "time_s": 61.0, "train_dice": 0.7, "validation_dice": 0.8}]


def test_notebook_targets_judge_the_runs_with_the_board_on():
    import bench_notebooks

    found = {target["name"]: target for target in bench_notebooks.targets([
        _notebook_run("vnet", "on", 600.0, 5.1, CURVE), _notebook_run("vnet", "headless", 590.0, 5.0, CURVE)])}
    whole = next(target for name, target in found.items() if "whole cpu notebook" in name)
    assert (whole["measured"], whole["met"]) == (10.0, True) and "1.73x faster than before" in whole["name"]
    dice = next(target for name, target in found.items() if "best validation Dice" in name)
    assert (dice["measured"], dice["met"]) == (0.8, False)
    board = next(target for name, target in found.items() if "board drawing" in name)
    assert board["measured"] == pytest.approx(0.01) and board["met"]
    assert "25 draws for 60 epochs" in board["name"] and "+2.0% on vs headless" in board["name"]
    slow = bench_notebooks.targets([_notebook_run("vnet", "on", 600.0, 5.1, CURVE, share=0.06)])
    assert not next(target for target in slow if "board drawing" in target["name"])["met"]


def test_notebook_sections_are_timed_and_lab_2_is_judged_without_its_comparison(tmp_path):
    import bench_notebooks
    from nbformat import v4, write

    def cell(make, source, seconds=None):
        made = make(source)
        if seconds is not None:
            made.metadata["papermill"] = {"duration": seconds}
        return made

    notebook = v4.new_notebook(cells=[
        cell(v4.new_code_cell, "setup()", 4.0), cell(v4.new_markdown_cell, "## 7. Training\ntext"),
        cell(v4.new_code_cell, "fit()", 100.0), cell(v4.new_code_cell, "plot()", 2.5),
        cell(v4.new_markdown_cell, "## 10. Does the memory help?"), cell(v4.new_code_cell, "compare()", 500.0)])
    executed = tmp_path / "lab.ipynb"
    write(notebook, executed)
    sections = bench_notebooks.sections_s(executed)
    assert sections == {"(before the first section)": 4.0, "## 7. Training": 102.5,
                        "## 10. Does the memory help?": 500.0}
    assert bench_notebooks.sections_s(None) == {}
    run = dict(_notebook_run("cfcm", "on", 620.0, 2.0, CURVE), sections_s=sections)
    found = bench_notebooks.targets([run])
    whole = next(target for target in found if "whole cpu notebook" in target["name"])
    rest = next(target for target in found if "without its comparison (section 10, 8.3 min" in target["name"])
    assert (whole["measured"], whole["met"], whole["target"]) == (10.3, True, "<= 15")
    assert (rest["measured"], rest["met"], rest["target"]) == (2.0, True, "<= 5")
    slow = bench_notebooks.targets([dict(run, wall_time_s=820.0)])
    assert not next(target for target in slow if "without" in target["name"])["met"]


def test_notebook_report_lists_sections_in_notebook_order_for_runs_with_the_board_on():
    sections = {"## 10. Does the memory help?": 500.0, "## 7. Training": 102.5, "## 8. Evaluation": 3.0,
                "(before the first section)": 12.0}
    runs = [dict(_notebook_run("cfcm", board, 620.0, 2.0, CURVE), sections_s=sections) for board in ("on", "headless")]
    text = "\n".join(report.notebooks_section({"status": "ok", "runs": runs}))
    assert text.count("spends its time") == 1  # the run with the board on only
    assert "(before the first section) 12 s; 7. Training 102 s; 10. Does the memory help? 500 s." in text
    assert "Evaluation" not in text  # under 10 s


def test_notebook_boards_log_is_summed(tmp_path):
    import bench_notebooks

    log = tmp_path / "boards.jsonl"
    assert bench_notebooks.boards(log) == {}
    log.write_text('{"updates": 60, "draws": 30, "drawing_s": 4.0, "elapsed_s": 200.0}\n'
                   '{"updates": 15, "draws": 15, "drawing_s": 1.0, "elapsed_s": 50.0}\n')
    assert bench_notebooks.boards(log) == {"boards": 2, "board_updates": 75, "board_draws": 45,
                                           "board_drawing_s": 5.0, "board_share": 0.02}


def test_markdown_says_why_a_section_has_no_numbers(tmp_path):
    text = report.markdown(_results({
        "data": {"status": "failed", "error": "DataError: no data found"},
        "gpu": {"status": "not measured", "reason": "no CUDA GPU visible"},
        "notebooks": {"status": "measured", "runs": [_notebook_run("vnet", "on", 600.0, 5.1, CURVE)],
                      "targets": [{"name": "Lab 1", "target": ">= 0.85", "measured": 0.8,
                                   "unit": "Dice", "met": False}]},
    }))
    assert "_failed: DataError: no data found_" in text
    assert "_not measured: no CUDA GPU visible_" in text
    assert "| Lab 1 | >= 0.85 | 0.8 |  | **no** |" in text
    assert "0.800 (epoch 2, 61 s)" in text
    path = report.plot_learning_curves(_results({}), tmp_path / "curves.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("shape, size", [((67, 67, 14), (64, 64, 32)), ((200, 201, 38), (256, 256, 96)),
                                         ((9, 10, 11), (4, 6, 8)), ((8, 8, 8), (8, 8, 8))])
def test_seed_crop_and_labkit_crop_pick_the_same_voxels_for_even_sizes(shape, size):
    volume = np.arange(np.prod(shape), dtype=np.float32).reshape((1, *shape)) + 1
    seed_crop, first_voxel = seed_reference.seed_crop(volume, size)
    assert tuple(first_voxel) == crop_or_pad_start(shape, size)
    np.testing.assert_array_equal(seed_crop, crop_or_pad(volume, size))


def test_odd_crop_of_an_even_axis_differs_by_one_voxel_at_most():
    # the seed centres on floor(shape / 2) - floor(size / 2); labkit on floor((shape - size) / 2)
    _, first_voxel = seed_reference.seed_crop(np.zeros((1, 10, 9, 12)), (5, 5, 6))
    assert tuple(first_voxel) == (3, 2, 3)
    assert crop_or_pad_start((10, 9, 12), (5, 5, 6)) == (2, 2, 3)


def test_seed_label_is_one_class_and_image_channels_first_in_0_1():
    nib = pytest.importorskip("nibabel")
    ramp = np.arange(48.0).reshape(4, 4, 3)
    image = nib.Nifti1Image(np.stack([ramp * 3 + 5, -ramp], -1), np.eye(4))
    label = nib.Nifti1Image(np.array([0, 1, 2, 0] * 12, dtype=np.float32).reshape(4, 4, 3), np.eye(4))
    array = seed_reference.seed_image_array(image)
    assert array.shape == (2, 4, 4, 3)
    assert array.min(axis=(1, 2, 3)).tolist() == [0.0, 0.0]
    assert array.max(axis=(1, 2, 3)).tolist() == [1.0, 1.0]
    assert np.unique(seed_reference.seed_label_array(label)).tolist() == [0.0, 1.0]


def test_render_rewrites_markdown_and_png_from_json(tmp_path):
    (tmp_path / "latest.json").write_text(json.dumps(_results({"gpu": {"status": "not measured",
                                                                       "reason": "no GPU"}})))
    assert run_all.main(["--render", "--out", str(tmp_path)]) == 0
    assert "_not measured: no GPU_" in (tmp_path / "latest.md").read_text()
    assert (tmp_path / "learning_curves.png").read_bytes().startswith(PNG_MAGIC)
