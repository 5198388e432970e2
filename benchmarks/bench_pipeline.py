#!/usr/bin/env python
"""Time per stage and peak memory of the Pipeline, printed (never asserted).

Cases: the real upper-abdomen CT of ../shared/data and a synthetic full-size clinical CT
(512x512xN at 0.8 mm x 0.8 mm x 1 mm, a phantom by default). Each time is also given as a
ratio to a baseline measured in the same process on the same volume: resampling the CT to the
liver model's grid (a fixed, model-independent cost), so numbers compare across machines.

    python benchmarks/bench_pipeline.py [--slices 300] [--fast] [--skip-full-size]

(with the library installed: ``pip install -e .``)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import SimpleITK as sitk

from LiverTumorSegLib.io.volume import load_volume
from LiverTumorSegLib.pipeline import Pipeline, PipelineSettings
from LiverTumorSegLib.preprocess import resample_ct_to_model

ROOT = Path(__file__).resolve().parents[1]  # the checkout: the shared data lie beside it


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Reset the kernel's peak-RSS counter where Linux allows it (so each case has its own peak)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def full_size_ct(slices: int) -> sitk.Image:
    from LiverTumorSegLib.develop.synth.phantom import make_phantom

    ph = make_phantom(4242, size_mm=(409.6, 409.6, float(slices)), spacing=(0.8, 0.8, 1.0), n_tumors=(3, 3))
    return sitk.Cast(ph.ct, sitk.sitkFloat32)


def bench(pipeline: Pipeline, name: str, ct: sitk.Image) -> dict:
    reset_peak()
    start = time.perf_counter()
    resample_ct_to_model(ct, pipeline.liver_model.card.spacing_mm)
    baseline = time.perf_counter() - start
    start = time.perf_counter()
    result = pipeline.run(ct)
    total = time.perf_counter() - start
    stages = result.seconds_per_stage
    row = {"case": name, "size": list(ct.GetSize()), "total_s": round(total, 2), "baseline_s": round(baseline, 3),
           "total_over_baseline": round(total / max(baseline, 1e-6), 1), "stages_s": stages,
           "peak_rss_mb": round(peak_rss_mb()), "device": result.device,
           "liver_ml": round(result.measurements.liver_volume_ml, 1),
           "tumor_ml": round(result.measurements.tumor_volume_ml, 2)}
    print(f"{name:<28} {row['size']}  total {total:7.1f} s  ({row['total_over_baseline']}x baseline "
          f"{baseline:.2f} s)  peak RSS {row['peak_rss_mb']} MB")
    for stage, seconds in stages.items():
        print(f"    {stage:<12} {seconds:8.2f} s")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-full-size", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    pipeline = Pipeline(PipelineSettings(device=args.device, fast=args.fast))
    rows = []
    real = ROOT.parent / "shared" / "data" / "ts_upper_abdomen_3mm" / "ct.nii.gz"
    if real.exists():
        rows.append(bench(pipeline, "real upper abdomen 3 mm", load_volume(real).image))
    if not args.skip_full_size:
        start = time.perf_counter()
        ct = full_size_ct(args.slices)
        print(f"(synthetic full-size CT made in {time.perf_counter() - start:.0f} s)")
        rows.append(bench(pipeline, f"synthetic 512x512x{args.slices}", ct))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
