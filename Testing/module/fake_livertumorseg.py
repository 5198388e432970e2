"""A stand-in for ``python -m LiverTumorSegLib`` that speaks the same background-process protocol,
for testing the module's runner without models. The behaviour is picked by ``$FAKE_CLI_MODE``:

- ``ok``: progress for every stage (two tumor members), a log warning, a non-JSON line, a
  labelmap (box liver + one tumor) on the input grid, a report, a lesions CSV; exit 0.
- ``error``: one progress line, then ``error: ...`` on stderr; exit 1.
- ``crash``: a traceback on stderr, no ``error:`` line; exit 3.
- ``noresult``: progress, then exit 0 without a result event.
- ``hang``: starts a child process (its pid is logged), writes a partial file, then sleeps until
  killed (for Cancel).
- ``orphan``: starts a child that keeps stdout open (its pid is logged), then exits 0 without a result.

Usage (as the module calls it): ``fake_livertumorseg.py segment INPUT --output DIR --progress json ...``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def progress(stage: str, fraction: float, message: str = "") -> None:
    emit({"event": "progress", "stage": stage, "fraction": fraction, "message": message})


def write_outputs(input_path: Path, output_dir: Path) -> dict:
    import numpy as np
    import SimpleITK as sitk

    ct = sitk.ReadImage(str(input_path))
    hu = sitk.GetArrayFromImage(ct)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    k, j, i = labels.shape
    labels[k // 4: 3 * k // 4, j // 4: 3 * j // 4, i // 4: 3 * i // 4] = 1
    tumor = (slice(k // 2 - 1, k // 2 + 1), slice(j // 2 - 2, j // 2 + 2), slice(i // 2 - 2, i // 2 + 2))
    labels[tumor] = 2
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(ct)
    name = input_path.name[: -len(".nrrd")] if input_path.name.endswith(".nrrd") else input_path.stem
    output_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"segmentation": output_dir / f"{name}.seg.nrrd", "labelmap": output_dir / f"{name}.nii.gz",
               "report": output_dir / f"{name}.json", "lesions_csv": output_dir / f"{name}_lesions.csv"}
    sitk.WriteImage(image, str(outputs["labelmap"]), useCompression=True)
    sitk.WriteImage(image, str(outputs["segmentation"]), useCompression=True)
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    liver_ml = float((labels > 0).sum()) * voxel_ml
    tumor_voxels = int((labels == 2).sum())
    centre_kji = [(s.start + s.stop - 1) / 2.0 for s in tumor]
    centre_lps = ct.TransformContinuousIndexToPhysicalPoint([centre_kji[2], centre_kji[1], centre_kji[0]])
    lesion = {"id": 1, "volume_ml": tumor_voxels * voxel_ml, "longest_axial_diameter_mm": 4.0 * ct.GetSpacing()[0],
              "centroid_ras_mm": [-centre_lps[0], -centre_lps[1], centre_lps[2]],
              "mean_hu": float(hu[labels == 2].mean()), "voxel_count": tumor_voxels}
    report = {"liver_volume_ml": liver_ml, "tumor_volume_ml": tumor_voxels * voxel_ml,
              "tlvr": tumor_voxels * voxel_ml / liver_ml, "lesions": [lesion],
              "models": [{"name": "fake-liver", "version": "0", "non_clinical": True}], "device": "cpu",
              "seconds_per_stage": {"liver": 0.1}}
    outputs["report"].write_text(json.dumps(report), encoding="utf-8")
    outputs["lesions_csv"].write_text("id,volume_ml\n1,%.4f\n" % lesion["volume_ml"], encoding="utf-8")
    return {key: str(path) for key, path in outputs.items()}


def segment(args: argparse.Namespace) -> int:
    mode = os.environ.get("FAKE_CLI_MODE", "ok")
    progress("load", 0.0, str(args.input))
    if mode == "error":
        sys.stderr.write("error: the input is not a CT (its values look like MR); give a CT volume\n")
        return 1
    if mode == "crash":
        sys.stderr.write("Traceback (most recent call last):\n  File \"x.py\", line 1\nZeroDivisionError: oops\n")
        return 3
    progress("load", 1.0)
    if mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        emit({"event": "log", "level": "info", "message": f"child pid {child.pid}"})
        progress("liver", 0.1)
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "partial.tmp").write_text("partial")
        time.sleep(600)
        return 0
    if mode == "orphan":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # inherits stdout
        emit({"event": "log", "level": "info", "message": f"child pid {child.pid}"})
        return 0
    print("a line that is not JSON, e.g. a library's own print", flush=True)
    for stage in ("liver", "crop", "tumor:fake-a", "tumor:fake-b", "postprocess", "measure"):
        for fraction in (0.0, 0.5, 1.0):
            progress(stage, fraction)
    emit({"event": "log", "level": "warning", "message": "fake warning: demo models are non-clinical"})
    if mode == "noresult":
        return 0
    progress("write", 0.0)
    outputs = write_outputs(args.input, args.output)
    progress("write", 1.0)
    name = Path(outputs["labelmap"]).name[: -len(".nii.gz")]
    emit({"event": "result", "input": str(args.input), "name": name, "outputs": outputs})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    seg = sub.add_parser("segment")
    seg.add_argument("input", type=Path)
    seg.add_argument("--output", type=Path, required=True)
    seg.add_argument("--progress", choices=["json"], required=True)
    seg.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    for flag in ("--fast", "--force", "--no-tta", "--no-liver-refine", "--no-active-contour", "--no-interslice"):
        seg.add_argument(flag, action="store_true")
    seg.add_argument("--liver-model")
    seg.add_argument("--tumor-model")
    models = sub.add_parser("models")
    models.add_argument("action", choices=["list"])
    models.add_argument("--json", action="store_true", required=True)
    args = parser.parse_args()
    if args.command == "models":
        print(json.dumps([{"name": "fake-tumor", "version": "1", "task": "tumor", "non_clinical": True,
                           "description": "a fake", "trained_on": "nothing", "metrics": {}}]))
        return 0
    return segment(args)


if __name__ == "__main__":
    sys.exit(main())
