"""Turn ``latest.json`` into the Markdown table the README links to, and the learning-curve PNG."""

from __future__ import annotations

from pathlib import Path

NOT_MEASURED = "not measured"


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _times(value) -> str:
    """A speed-up such as ``2.5x`` (a dash when missing)."""
    return "–" if value is None else f"{_number(value)}x"


def _seconds(value) -> str:
    return "–" if value is None else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _status_line(section: dict | None) -> list[str] | None:
    """A one-paragraph note for a section that has no numbers."""
    if section is None:
        return [f"_{NOT_MEASURED}: this section was not run._", ""]
    status = section.get("status")
    if status == "failed":
        return [f"_failed: {section.get('error', 'see the log')}_", ""]
    if status == NOT_MEASURED:
        return [f"_{NOT_MEASURED}: {section.get('reason', '')}_", ""]
    return None


def _met(value) -> str:
    return {True: "yes", False: "**no**", None: NOT_MEASURED}[value]


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def targets_table(sections: dict) -> list[str]:
    rows = []
    for key, _, _ in SECTIONS:  # the JSON stores keys sorted; report in the sections' order
        for part in _parts(sections.get(key)):
            for target in part.get("targets", []):
                measured = target.get("measured")
                unit = target.get("unit", "")
                shown = _times(measured) if unit == "x" else _number(measured)
                if unit == "fraction" and measured is not None:
                    shown = f"{measured:.2%}"
                detail = ""
                if "measured_median_ratio" in target:
                    detail = (f"{_times(target['measured_median_ratio'])} / "
                              f"{_times(target['measured_min_ratio'])}")
                rows.append([target["name"], target["target"], shown, detail, _met(target.get("met"))])
    if not rows:
        return ["_No targets measured._", ""]
    return ["Speed-ups are judged on the smaller of the median ratio and the min ratio (other users "
            "of a shared machine only add time, so one lucky run cannot meet a target).", ""] + _table(
        ["Measurement", "Target", "Measured", "median / min ratio", "Met"], rows)


def _parts(section) -> list[dict]:
    """A section's result dicts (the learning section holds one per lab)."""
    if not isinstance(section, dict):
        return []
    if "parts" in section:
        parts = section["parts"]
        return [parts[name] for name in sorted(parts, key=_lab_order) if isinstance(parts[name], dict)]
    return [section]


def _lab_order(name: str) -> int:
    return {"vnet": 0, "cfcm": 1}.get(name, 2)


def data_section(section: dict | None) -> list[str]:
    note = _status_line(section)
    if note:
        return note
    lines = [f"Synthetic prostate set ({section['dataset']['cases']} labelled cases, "
             f"{section['dataset']['source']}). `seed`: nibabel + nilearn `resample_img` "
             "('continuous' image, nearest label) in one process with the seed's iterator; "
             "`labkit_cold`: `BatchIterator(before=prostate.preprocessing(...), cache=False)` "
             "(its default worker threads); `labkit_cold_1_worker`: the same on one thread; "
             "`labkit_cached`: reading the disk cache. Peak RSS: growth of the measuring process.", ""]
    for setting in section["settings"]:
        lines += [f"**{setting['name']}**: {setting['spacing_mm']} mm, {setting['size']} voxels, "
                  f"{setting['cases']} cases, {setting['repeats']} repeats interleaved.", ""]
        rows = []
        seed = setting["timings"]["seed"]
        for name, timing in setting["timings"].items():
            rows.append([name, _seconds(timing["min_s"]), _seconds(timing["median_s"]),
                         _seconds(setting["per_case_median_s"][name]),
                         f"{_times(seed['median_s'] / timing['median_s'])} / "
                         f"{_times(seed['min_s'] / timing['min_s'])}",
                         _number(timing.get("peak_rss_mb"))])
        lines += _table(["Variant", "min s", "median s", "s / case", "vs seed (median / min)",
                         "peak RSS MB"], rows)
        epoch = setting["epoch_pass"]
        geometry = setting["geometry"]
        lines += [f"One epoch pass without a network (the seed deep-copies the prepared set, "
                  f"{setting['prepared_dataset_mb']['seed']} MB): seed "
                  f"{_seconds(epoch['timings']['seed']['median_s'])} s, labkit "
                  f"{_seconds(epoch['timings']['labkit']['median_s'])} s "
                  f"({_number(epoch['speedup'])}x).", "",
                  f"Geometry, {len(geometry['cases'])} cases (orientations "
                  f"{', '.join(geometry['orientations'])}): label Dice min "
                  f"{_number(geometry['label_dice_min'], 4)}, mean {_number(geometry['label_dice_mean'], 4)}; "
                  f"image (seed cubic vs labkit linear, before normalisation) mean relative difference "
                  f"{_number(geometry['image_relative_difference_mean'])}, correlation min "
                  f"{_number(geometry['image_correlation_min'], 4)}. " + _linear_note(geometry), ""]
    overhead = section.get("epoch_overhead") or {}
    if overhead:
        timings = overhead["timings"]
        per_epoch = overhead.get("epochs_per_sample", 1)
        network = timings["training_epoch_premade"]["median_s"] / per_epoch
        work = timings["iterator_work_no_network"]["median_s"] / per_epoch
        ways = overhead.get("ways") or {}
        lines += [f"Iterator overhead, smoke profile ({overhead['batches']} batches of {overhead['size']}, "
                  f"the notebook's augmentation on, {overhead['net']}, {overhead['torch_threads']} "
                  f"PyTorch thread(s); medians of {per_epoch}-epoch runs, the ways side by side, "
                  "interleaved). Judged: the share of the epoch the training loop waits for its "
                  f"batches as the notebook iterates ({overhead.get('notebook_setting', 'prefetch=2')}), "
                  "clocked inside the loop. Cross-check: the paired difference to the same loop over "
                  f"the same batches made beforehand ({_seconds(network)} s per epoch); on a shared "
                  "2-core machine two epoch timings differ by a few percent from noise alone, and "
                  "premade batches stay in the CPU's cache from one epoch to the next, which fresh "
                  "batches never do. The iterator's own work without a network takes "
                  f"{_seconds(work)} s per epoch ({overhead['iterator_work_fraction']:.1%} of an "
                  "epoch made in turn).", "",
                  "| way | epoch (s) | loop waits (median / max) | paired difference (median; quartiles) |",
                  "|---|---|---|---|"]
        names = {"training_epoch": "`prefetch=2` (the notebook: a background thread)",
                 "training_epoch_in_turn": "`prefetch=0` (each batch made when asked)",
                 "training_epoch_ndimage_affine": "`prefetch=2`, affine by `ndimage.affine_transform`"}
        for name, label in names.items():
            way = ways.get(name)
            if not way or name not in timings:
                continue
            low, high = way["paired_difference_fraction_quartiles"]
            lines.append(f"| {label} | {_seconds(timings[name]['median_s'] / per_epoch)} | "
                         f"{way['wait_fraction_median']:.2%} / {way['wait_fraction_max']:.2%} | "
                         f"{way['paired_difference_fraction_median']:.2%} ({low:.2%} to {high:.2%}) |")
        lines.append("")
    return lines


def _linear_note(geometry: dict) -> str:
    linear = geometry.get("labkit_linear_vs_nilearn_linear") or {}
    if not linear.get("cases"):
        return ""
    text = (f"labkit linear vs nilearn 'linear' on the same grid ({len(linear['cases'])} cases): max "
            f"difference {_number(linear['max_relative'])} of the image maximum; ")
    if not linear.get("fraction_differing_max"):
        return text + "no voxel differs by more than 0.1 % of it."
    where = "all on the grid's outer faces" if linear["differences_only_on_faces"] else "some inside the grid"
    return text + (f"voxels differing by more than 0.1 %: at most "
                   f"{linear['fraction_differing_max']:.2%} of a case, {where}.")


def vnet_section(section: dict | None) -> list[str]:
    note = _status_line(section)
    if note:
        return note
    lines = [f"One training step (forward, Dice loss, backward, Adam) on CPU, "
             f"{section['threads']} threads, input {section['size']}, batch {section['batch_size']}, "
             f"{section['base_filters']} filters, {section['repeats']} repeats interleaved. "
             f"Lab code from {section['lab_source']}. `seed`: the old formulation (hand-written "
             "GroupNorm3D, `nn.DataParallel`); `seed_nn_groupnorm`: the same with `nn.GroupNorm`; "
             "`monai`: `monai.networks.nets.VNet` (its defaults).", ""]
    rows = []
    for name, row in section["networks"].items():
        seed = section["networks"]["seed"]
        rows.append([name, _number(row["parameters"]), _seconds(row["min_s"]), _seconds(row["median_s"]),
                     _number(row["samples_per_s"]),
                     f"{_times(seed['median_s'] / row['median_s'])} / {_times(seed['min_s'] / row['min_s'])}",
                     _number(row.get("peak_rss_mb"))])
    return lines + _table(["Network", "parameters", "min s/step", "median s/step", "samples/s",
                           "vs seed (median / min)", "peak RSS MB"], rows)


def cfcm_section(section: dict | None) -> list[str]:
    note = _status_line(section)
    if note:
        return note
    lines = [f"Lab code from {section['lab_source']}; TensorFlow in its own process. ConvLSTM: "
             "forward + backward over one stage's blocks, both under `tf.function`, Keras' "
             "`ConvLSTM2D` with the weights mapped.", ""]
    rows = []
    for case in section["convlstm"]:
        timings = case["timings"]
        ours, theirs = timings["hand_written_cell"], timings["keras_convlstm2d"]
        rows.append([case["name"], f"{case['batch']}x{case['height']}x{case['width']}x{case['channels']}",
                     case["steps"], f"{_seconds(ours['min_s'])} / {_seconds(ours['median_s'])}",
                     f"{_seconds(theirs['min_s'])} / {_seconds(theirs['median_s'])}",
                     f"{_times(theirs['median_s'] / ours['median_s'])} / {_times(theirs['min_s'] / ours['min_s'])}",
                     f"{case['state_relative_error']:.1e} / {case['input_gradient_relative_error']:.1e}"])
    lines += _table(["Sizes", "B x H x W x C", "steps", "hand-written s (min / median)",
                     "Keras s (min / median)", "speed-up (median / min)", "rel. error state / grad"], rows)
    networks = section.get("networks")
    if networks:
        lines += [f"Networks, one training step at {networks['height']}x{networks['width']}, batch "
                  f"{networks['batch']}, base filters {networks['base_filters']}:", ""]
        rows = [[name, _number(row["parameters"]), _seconds(row["min_s"]), _seconds(row["median_s"]),
                 _number(row["samples_per_s"])] for name, row in networks["networks"].items()]
        lines += _table(["Network", "parameters", "min s/step", "median s/step", "samples/s"], rows)
    return lines


def gpu_section(section: dict | None) -> list[str]:
    note = _status_line(section)
    if note:
        return note
    lines = [f"{section['device']}, input {section['size']}, batch {section['batch_size']}, "
             f"{section['base_filters']} filters, mixed precision in {section['amp_dtype']}.", ""]
    rows = [[name, _seconds(row["min_s"]), _seconds(row["median_s"]), _number(row["samples_per_s"]),
             _number(row["peak_gpu_memory_mb"]), _times(section["speedup_vs_seed"].get(name))]
            for name, row in section["networks"].items()]
    return lines + _table(["Variant", "min s/step", "median s/step", "samples/s", "peak GPU MB",
                           "vs seed"], rows)


def notebooks_section(section: dict | None) -> list[str]:
    note = _status_line(section)
    if note:
        return note
    rows = []
    for run in section["runs"]:
        rows.append([run["notebook"], run["profile"], run["board"], _seconds(run.get("wall_time_s")),
                     _seconds(run.get("training_s")), _seconds(run.get("epoch_s_median")),
                     run.get("epochs", "–"), _number(run.get("validation_dice")), _number(run.get("test_dice")),
                     _board(run), run["status"]])
    lines = ["Each notebook as shipped, executed top to bottom in a fresh kernel: once with the live "
             "board and progress bars drawn as in JupyterLab, once headless. Training s: the main "
             "run's epochs (validation included); validation Dice: its best epoch. Drawing: the "
             "boards' pictures sent and the seconds spent drawing them, as a share of the boards' "
             "time (every board in the notebook; each clocks itself).", ""]
    lines += _table(["Notebook", "profile", "board", "whole notebook s", "training s", "s / epoch",
                     "epochs", "validation Dice", "test Dice", "drawing", "status"], rows)
    for run in (run for run in section["runs"] if run["board"] == "on" and run["profile"] != "smoke"):
        sections = sorted(run.get("sections_s", {}).items(), key=lambda item: _section_number(item[0]))
        parts = [f"{heading.removeprefix('## ')} {seconds:.0f} s" for heading, seconds in sections if seconds >= 10]
        if parts:
            lines += [f"Where {run['notebook']} ({run['profile']}, board on) spends its time, sections of "
                      f"10 s or more: {'; '.join(parts)}.", ""]
    if section.get("not_measured"):
        lines += [f"Profiles {NOT_MEASURED}: {', '.join(section['not_measured'])}.", ""]
    return lines


def _section_number(heading: str) -> int:
    """``'## 10. Does ...'`` -> 10 (notebook order; JSON keeps keys sorted as text); 0 if none."""
    number = heading.removeprefix("## ").split(".")[0]
    return int(number) if number.isdigit() else 0


def _board(run: dict) -> str:
    if run.get("board") != "on" or run.get("board_share") is None:
        return "–"
    return f"{run['board_draws']} pictures, {run['board_drawing_s']:.1f} s ({run['board_share']:.1%})"


def threads_section(section: dict | None) -> list[str]:
    note = _status_line(section)
    if note:
        return note
    lines = [f"The notebook's own epoch (training, validation, checkpoint, board line), cpu profile, in a "
             f"fresh process per configuration, {section['epochs_per_process']} epochs after a warm-up "
             f"one, configurations alternated {section['repeats']} times; medians. The machine has "
             f"{section['cores_available']} usable cores.", ""]
    for lab in sorted(section["labs"], key=_lab_order):
        part = section["labs"][lab]
        rows = [[name, _seconds(row["median_s"]), _seconds(row["min_s"]),
                 "**fastest**" if name in part["fastest"].values() else ""] for name, row in part["rows"].items()]
        lines += [f"**{'Lab 1 V-Net' if lab == 'vnet' else 'Lab 2 CFCM'}**", ""]
        lines += _table(["configuration", "median s / epoch", "min s / epoch", ""], rows)
    if section.get("not_measured"):
        lines += [f"Not measured: {', '.join(section['not_measured'])}.", ""]
    return lines


def _learning_runs(results: dict) -> dict:
    """{lab: the cpu-profile notebook run with the board on} from the notebooks section."""
    section = results["sections"].get("notebooks") or {}
    return {run["lab"]: run for run in section.get("runs", [])
            if run.get("profile") == "cpu" and run.get("board") == "on" and run.get("curve")}


def learning_section(results: dict) -> list[str]:
    runs = _learning_runs(results)
    if not runs:
        return [f"_{NOT_MEASURED}: no cpu-profile notebook run in this report._", ""]
    rows = []
    for lab in sorted(runs, key=_lab_order):
        curve = runs[lab]["curve"]
        best = max(curve, key=lambda point: point["validation_dice"])
        rows.append([lab, len(curve), _seconds(curve[-1]["time_s"]),
                     f"{best['validation_dice']:.3f} (epoch {best['epoch']}, {best['time_s']:.0f} s)"])
    return ["![validation Dice against training time](learning_curves.png)", "",
            "The main run of each cpu-profile notebook (board on): validation Dice against the seconds "
            "of training a student waits for.", ""] + _table(
        ["Lab", "epochs", "training s", "best validation Dice"], rows)


SECTIONS = [("data", "1. Data preparation (Lab 1 prostate set)", data_section),
            ("vnet", "2. Lab 1 network: V-Net training step (CPU)", vnet_section),
            ("cfcm", "3. Lab 2: ConvLSTM cell and CFCM34", cfcm_section),
            ("gpu", "GPU (fp32 vs mixed precision, channels_last_3d)", gpu_section),
            ("threads", "4. Thread policy: the epoch a student waits for", threads_section),
            ("notebooks", "5. Whole notebooks, board on and headless", notebooks_section)]


def markdown(results: dict) -> str:
    """The whole ``latest.md``."""
    machine = results["machine"]
    libraries = ", ".join(f"{name} {version}" for name, version in machine.get("libraries", {}).items())
    lines = ["# Benchmark results", "",
             f"Last written by `{results.get('command', 'benchmarks/run_all.py')}` at {results['finished_at']}"
             + (" (**--quick**: tiny sizes, not the lab's settings)" if results.get("quick") else "") + ".",
             "",
             f"Machine: {machine['cpu']}, {machine['cores']} usable cores, {machine.get('memory_gb')} GB; "
             f"GPU: {', '.join(machine['gpus']) or 'none'}; load average at start "
             f"{machine.get('load_average_at_start')} (a shared machine: absolute times vary, the "
             "side-by-side ratios are what to read). Python " + machine["python"] + "; " + libraries + ".",
             "",
             "Times are min / median over repeats run side by side in one process, interleaved; "
             "ratios are given for both. Sections may come from different runs (`--only`): each "
             "says when it was measured and under what load. Raw numbers: [latest.json](latest.json).", "",
             "## Targets", ""]
    lines += targets_table(results["sections"])
    for key, title, render in SECTIONS:
        section = results["sections"].get(key)
        lines += [f"## {title}", ""]
        if section and section.get("measured_at"):
            load = section.get("load_average") or {}
            load_note = (f", 1-min load average {load.get('start')} -> {load.get('end')}"
                         if load.get("start") is not None else "")
            lines += [f"_measured {section['measured_at']}, {section.get('section_wall_s', '?')} s"
                      f"{load_note}_", ""]
        lines += render(section)
    lines += ["## 6. Learning: validation Dice against training time", ""] + learning_section(results)
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# Learning curves
# ----------------------------------------------------------------------------------------------


def plot_learning_curves(results: dict, path: Path) -> Path:
    """Validation Dice against minutes of training, one panel per lab, targets drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit.io import atomic_path

    runs = _learning_runs(results)
    targets = {"vnet": (0.85, "Lab 1 V-Net (prostate MRI)"), "cfcm": (0.90, "Lab 2 CFCM (chest X-ray)")}
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, (lab, (target, title)) in zip(axes, targets.items(), strict=True):
        curve = (runs.get(lab) or {}).get("curve") or []
        ax.set_title(title)
        ax.set_xlabel("training time (minutes)")
        ax.set_ylabel("Dice (0.5 threshold)")
        ax.set_ylim(0, 1)
        ax.axhline(target, color="tab:green", linestyle="--", label=f"cpu target {target}")
        ax.axvline(10, color="grey", linestyle=":", label="10 minutes")
        if curve:
            minutes = [point["time_s"] / 60 for point in curve]
            ax.plot(minutes, [point["validation_dice"] for point in curve], "o-", label="validation")
            ax.plot(minutes, [point["train_dice"] for point in curve], ".-", alpha=0.5, label="training")
            ax.set_xlim(0, max(10.5, minutes[-1] * 1.05))
        else:
            ax.text(0.5, 0.5, NOT_MEASURED, ha="center", va="center", transform=ax.transAxes)
            ax.set_xlim(0, 10.5)
        ax.legend(loc="lower right", fontsize="small")
    figure.suptitle("cpu profile, synthetic data, the notebooks as shipped (board on)")
    path = Path(path)
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    return path
