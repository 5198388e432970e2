#!/usr/bin/env python
"""Click-to-lesion latency of the one-click lesion edit (LiverTumorSegLib.edit), printed (never
asserted): the embedded tumor ensemble on the CPU with 2 PyTorch threads (a laptop), a 5 cm
synthetic tumour inserted into a real liver that the labelmap does not have yet, clicked at its
centre and at points a few mm off it.

Cases: the real upper-abdomen CT of ../shared/data (3 mm) and, when present, the full-resolution
CHAOS CT (512x512 at 0.73 mm, expert liver). Per case: the first click (one-time costs), the median
of the next clicks (wall and CPU seconds; the model's share), the Dice of the drawn lesion against
the inserted one, the remove click, and the process's peak resident memory. Each time is also
given as a ratio to a baseline measured in the same run (a fixed 3-D convolution, about a tenth
of one member's pass), so numbers compare across machines and across a busy and an idle machine.

Then the Slicer module's path on real MRML (PyPI slicer-core; skipped without it): the CT as a
volume node, the liver as a segmentation node, and ``LesionEditing.add`` as the panel runs it on a
click: the segments' voxels to arrays, the library's edit, the changed voxels written back into
the segments (the click-to-drawn-lesion latency); then, apart, the table update that follows
it and the undo.

    python benchmarks/bench_lesion_click.py [--clicks 5] [--threads 2] [--skip-full-size] [--skip-mrml]
                                            [--json out.json]

(with the library installed: ``pip install -e .``)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bench_pipeline import peak_rss_mb, reset_peak  # beside this file

from LiverTumorSegLib import edit
from LiverTumorSegLib.develop.synth.tumors import insert_tumors_image
from LiverTumorSegLib.geometry import lps_to_ras
from LiverTumorSegLib.io.volume import load_volume
from LiverTumorSegLib.models.registry import ModelRegistry, embedded_models_dir

ROOT = Path(__file__).resolve().parents[1]  # the checkout: the shared data lie beside it
DATA = ROOT.parent / "shared" / "data"
OFFSETS_MM = [(0, 0, 0), (4, 0, 0), (0, -4, 0), (0, 0, 4), (-3, 3, 0), (3, 0, -3), (0, 3, 3)]


def baseline_seconds(repeats: int = 3) -> float:
    """A fixed workload: one 3x3x3 convolution, 16 -> 16 channels, on a 48^3 volume (median)."""
    import torch

    conv = torch.nn.Conv3d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 48, 48, 48)
    times = []
    with torch.inference_mode():
        conv(x)
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def insert_lesion(ct: sitk.Image, liver: sitk.Image, diameter_mm: float = 50.0):
    """(CT with one hypodense tumour of ``diameter_mm``, its 0/1 reference mask, its centre in LPS mm)."""
    for seed in range(20):
        ct_t, labels, infos = insert_tumors_image(ct, liver, seed=seed, n_tumors=1, size_range_mm=(diameter_mm,
                                                                                                   diameter_mm),
                                                  hyper_fraction=0.0)
        if infos and infos[0]["diameter_mm"] >= 0.9 * diameter_mm:
            return ct_t, sitk.GetArrayFromImage(labels) == 2, infos[0]["center_lps_mm"]
    raise RuntimeError(f"no room for a {diameter_mm:.0f} mm tumour in this liver")


def bench(editor: edit.LesionEditor, name: str, ct: sitk.Image, liver: sitk.Image, clicks: int,
          baseline: float, mrml_path: bool = True) -> dict:
    ct_t, reference, center_lps = insert_lesion(ct, liver)
    model_seconds = []
    probability = editor.probability

    def timed_probability(*args, **kwargs):
        start = time.perf_counter()
        try:
            return probability(*args, **kwargs)
        finally:
            model_seconds.append(time.perf_counter() - start)

    editor.probability = timed_probability  # type: ignore[method-assign]
    reset_peak()
    walls, cpus, models, dices, methods = [], [], [], [], []
    first = None
    for index in range(clicks + 1):
        offset = np.asarray(OFFSETS_MM[index % len(OFFSETS_MM)], dtype=float)
        point = [float(v) for v in lps_to_ras(np.asarray(center_lps) + offset)]
        model_seconds.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        result = editor.add(ct_t, liver, point)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        drawn = sitk.GetArrayViewFromImage(result.labelmap) == 2
        dice = 2.0 * np.count_nonzero(drawn & reference) / (np.count_nonzero(drawn) + np.count_nonzero(reference))
        if index == 0:
            first = wall
            continue
        walls.append(wall)
        cpus.append(cpu)
        models.append(sum(model_seconds))
        dices.append(dice)
        methods.append(result.method)
    editor.probability = probability  # type: ignore[method-assign]
    start = time.perf_counter()
    edit.remove_lesion(ct_t, result.labelmap, [float(v) for v in lps_to_ras(center_lps)])
    remove = time.perf_counter() - start
    median = statistics.median(walls)
    row = {"case": name, "size": list(ct.GetSize()), "spacing_mm": [round(s, 3) for s in ct.GetSpacing()],
           "lesion_ml": round(float(reference.sum()) * np.prod(ct.GetSpacing()) / 1000.0, 1),
           "first_click_s": round(first, 3), "median_click_s": round(median, 3),
           "median_click_cpu_s": round(statistics.median(cpus), 3),
           "median_model_s": round(statistics.median(models), 3), "clicks": len(walls),
           "click_over_baseline": round(median / baseline, 1), "remove_s": round(remove, 3),
           "dice_median": round(statistics.median(dices), 3), "dice_min": round(min(dices), 3),
           "methods": sorted(set(methods)), "peak_rss_mb": round(peak_rss_mb())}
    print(f"{name:<30} {row['size']} at {row['spacing_mm']} mm, lesion {row['lesion_ml']} mL")
    print(f"    click to lesion: median {median:.2f} s wall ({row['median_click_cpu_s']:.2f} s CPU, model "
          f"{row['median_model_s']:.2f} s) over {len(walls)} clicks = {row['click_over_baseline']}x baseline; "
          f"first click {first:.2f} s")
    print(f"    remove click {remove:.2f} s; Dice median {row['dice_median']} (min {row['dice_min']}), "
          f"{'/'.join(row['methods'])}; peak RSS {row['peak_rss_mb']} MB")
    if mrml_path:
        row["mrml"] = bench_mrml(editor, ct_t, liver, reference, center_lps, clicks, baseline)
    return row


def import_from(folder: Path, name: str):
    """The module or package ``name`` imported from ``folder`` alone, as Slicer imports a module
    folder's packages (the module's LiverTumorSegModuleLib; the MRML test helpers); sys.path is
    left as it is."""
    import importlib.machinery
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.machinery.PathFinder.find_spec(name, [str(folder)])
    if spec is None:
        raise ImportError(f"{name} is not in {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def bench_mrml(editor: edit.LesionEditor, ct: sitk.Image, liver: sitk.Image, reference: np.ndarray,
               center_lps, clicks: int, baseline: float) -> dict:
    """The module's path on a real segmentation node: LesionEditing.add per click (segments to
    arrays, the edit, the changed voxels written back), then the table update and the undo."""
    import slicer

    add_volume_from_image = import_from(ROOT / "Testing" / "mrml", "mrml_helpers").add_volume_from_image
    import_from(ROOT / "LiverTumorSeg", "LiverTumorSegModuleLib")
    from LiverTumorSegModuleLib import lesion, mrml

    scene = slicer.vtkMRMLScene()
    volume = add_volume_from_image(scene, ct)
    node = mrml.import_labelmap(scene, volume, (sitk.GetArrayFromImage(liver) > 0).astype(np.uint8))
    editing = lesion.LesionEditing(editor_factory=lambda: editor)
    start = time.perf_counter()
    editing.prepare(volume)  # at the button press: the CT to SimpleITK (the model is loaded already)
    prepare = time.perf_counter() - start
    clicks_s, cpus_s, edits_s, tables_s, undos_s, dices = [], [], [], [], [], []
    first = None
    for index in range(clicks + 1):
        offset = np.asarray(OFFSETS_MM[index % len(OFFSETS_MM)], dtype=float)
        point = [float(v) for v in lps_to_ras(np.asarray(center_lps) + offset)]
        start, cpu = time.perf_counter(), time.process_time()
        result = editing.add(node, volume, point)
        click, cpu = time.perf_counter() - start, time.process_time() - cpu
        drawn = mrml.segment_mask(node, mrml.SEGMENTS[1], volume)
        start = time.perf_counter()
        editing.update_measurements(node, volume)
        table = time.perf_counter() - start
        start = time.perf_counter()
        editing.undo(node)
        undo = time.perf_counter() - start
        if index == 0:
            first = click
            continue
        clicks_s.append(click)
        cpus_s.append(cpu)
        edits_s.append(result.edit.seconds)
        tables_s.append(table)
        undos_s.append(undo)
        dices.append(2.0 * np.count_nonzero(drawn & reference) / (np.count_nonzero(drawn) + np.count_nonzero(reference)))
    median = statistics.median(clicks_s)
    row = {"first_click_s": round(first, 3), "median_click_s": round(median, 3),
           "median_click_cpu_s": round(statistics.median(cpus_s), 3),
           "median_library_edit_s": round(statistics.median(edits_s), 3),
           "median_mrml_overhead_s": round(median - statistics.median(edits_s), 3),
           "click_over_baseline": round(median / baseline, 1), "prepare_s": round(prepare, 3),
           "median_table_update_s": round(statistics.median(tables_s), 3),
           "median_undo_s": round(statistics.median(undos_s), 3), "dice_median": round(statistics.median(dices), 3)}
    print(f"    Slicer module on MRML: click to lesion drawn in the segments median {median:.2f} s wall "
          f"({row['median_click_cpu_s']:.2f} s CPU; library edit {row['median_library_edit_s']:.2f} s + segments to arrays and back "
          f"{row['median_mrml_overhead_s']:.2f} s) = {row['click_over_baseline']}x baseline; first click "
          f"{first:.2f} s; CT prepared at the button press {prepare:.2f} s")
    print(f"    then the table update {row['median_table_update_s']:.2f} s (after the lesion is drawn), undo "
          f"{row['median_undo_s']:.2f} s; Dice median {row['dice_median']}")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-full-size", action="store_true")
    parser.add_argument("--skip-mrml", action="store_true", help="only the library, not the module's MRML path")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch

    mrml_path = not args.skip_mrml
    if mrml_path:
        try:
            import slicer  # noqa: F401  (PyPI slicer-core)
        except ImportError:
            print("slicer-core is not installed: the module's MRML path is not timed")
            mrml_path = False

    torch.set_num_threads(args.threads)
    baseline = baseline_seconds()
    start = time.perf_counter()
    editor = edit.LesionEditor(registry=ModelRegistry([embedded_models_dir()]), device="cpu")
    load = time.perf_counter() - start
    print(f"torch threads {torch.get_num_threads()}, baseline {baseline * 1000:.0f} ms, models loaded in {load:.2f} s "
          f"({editor.tumor_card.name}: {len(editor.members)} members, cube {editor.patch_mm:.0f} mm)")
    rows = []
    real = DATA / "ts_upper_abdomen_3mm"
    if (real / "ct.nii.gz").exists():
        rows.append(bench(editor, "real upper abdomen 3 mm", load_volume(real / "ct.nii.gz").image,
                          sitk.Cast(sitk.ReadImage(str(real / "liver_reference.nii.gz")), sitk.sitkUInt8),
                          args.clicks, baseline, mrml_path))
    chaos = DATA / "chaos_ct_1"
    if not args.skip_full_size and (chaos / "dicom").exists():
        ct = load_volume(chaos / "dicom").image
        liver = sitk.Cast(sitk.ReadImage(str(chaos / "liver_reference.nii.gz")) > 0, sitk.sitkUInt8)
        liver.CopyInformation(ct)
        rows.append(bench(editor, "CHAOS CT full resolution", ct, liver, args.clicks, baseline, mrml_path))
    if args.json:
        args.json.write_text(json.dumps({"baseline_s": baseline, "load_s": load, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
