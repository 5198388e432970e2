#!/usr/bin/env python
"""Render PNG overlays of synthetic phantoms and of real CTs with synthetic tumours, to look at.

Writes, under --out (default work_tmp/synth_examples):
  phantom_<seed>_axial.png / _coronal.png   axial slices (liver green, tumours red) and a coronal cut
  phantom_<seed>_neighbours.png             the axial slice where the stomach lies most against the liver,
                                            plain and with outlines (liver green, stomach yellow, bowel cyan,
                                            gallbladder magenta, kidney blue): the hard negatives
  real_<case>_tumors.png                    a real CT before/after synthetic tumour insertion
  compare_axial.png / compare_coronal.png   real CT slices (first row / panel) beside phantoms at 3 mm
Images are shown in radiological convention: anterior up, patient left on the image's right,
superior up in coronal cuts, pixels resampled to square millimetres.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from LiverTumorSegLib.develop.synth.phantom import ORGAN, make_phantom
from LiverTumorSegLib.develop.synth.shared_cases import has_shared_case, load_shared_case, shared_data_dir
from LiverTumorSegLib.develop.synth.tumors import insert_tumors_image
from LiverTumorSegLib.develop.scripts import checkout_root

ROOT = checkout_root()
SHARED = shared_data_dir(ROOT)
LIVER_RGB = (40, 220, 60)
TUMOR_RGB = (255, 40, 40)
NEIGHBOUR_RGB = {"stomach": (255, 220, 0), "bowel": (0, 220, 255), "gallbladder": (255, 0, 255),
                 "kidney": (60, 90, 255)}


def window(hu: np.ndarray, level: float = 50.0, width: float = 400.0) -> np.ndarray:
    low = level - width / 2.0
    return (np.clip((hu.astype(np.float32) - low) / width, 0.0, 1.0) * 255).astype(np.uint8)


def overlay(gray: np.ndarray, labels: Optional[np.ndarray]) -> np.ndarray:
    """Grey slice -> RGB with the outlines of liver (1) and tumour (2)."""
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if labels is None:
        return rgb
    for value, color in ((1, LIVER_RGB), (2, TUMOR_RGB)):
        mask = labels >= value if value == 1 else labels == value
        edge = mask & ~ndimage.binary_erosion(mask)
        rgb[edge] = color
    return rgb


def resize(rgb: np.ndarray, rows: int, cols: int) -> np.ndarray:
    rows, cols = max(1, int(round(rows))), max(1, int(round(cols)))
    r = (np.arange(rows) * rgb.shape[0] / rows).astype(int)
    c = (np.arange(cols) * rgb.shape[1] / cols).astype(int)
    return rgb[r][:, c]


def to_lps(image: sitk.Image) -> sitk.Image:
    return sitk.DICOMOrient(image, "LPS")


def axial(ct: np.ndarray, labels: Optional[np.ndarray], k: int, spacing_xyz: Sequence[float], mm_per_px: float):
    rgb = overlay(window(ct[k]), None if labels is None else labels[k])
    return resize(rgb, ct.shape[1] * spacing_xyz[1] / mm_per_px, ct.shape[2] * spacing_xyz[0] / mm_per_px)


def coronal(ct: np.ndarray, labels: Optional[np.ndarray], j: int, spacing_xyz: Sequence[float], mm_per_px: float):
    rgb = overlay(window(ct[::-1, j, :]), None if labels is None else labels[::-1, j, :])
    return resize(rgb, ct.shape[0] * spacing_xyz[2] / mm_per_px, ct.shape[2] * spacing_xyz[0] / mm_per_px)


def row(panels: List[np.ndarray], gap: int = 4) -> np.ndarray:
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, gap), (0, 0))) for p in panels]
    return np.concatenate(padded, axis=1)


def column(rows: List[np.ndarray], gap: int = 4) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(padded, axis=0)


def save_png(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from PIL import Image
        Image.fromarray(rgb).save(path)
    except ImportError:
        from skimage import io
        io.imsave(str(path), rgb, check_contrast=False)
    print(f"wrote {path}")


def liver_levels(labels: np.ndarray, count: int) -> List[int]:
    """``count`` axial slice indices spread over the liver's extent (or the volume if no liver)."""
    ks = np.flatnonzero(labels.any(axis=(1, 2))) if labels.any() else np.arange(labels.shape[0])
    return [int(ks[int(round(q * (len(ks) - 1)))]) for q in np.linspace(0.1, 0.9, count)]


def render_phantom(seed: int, out: Path, spacing: Sequence[float], n_tumors: int) -> None:
    start = time.time()
    ph = make_phantom(seed, spacing=tuple(spacing), n_tumors=n_tumors)
    seconds = time.time() - start
    ct = sitk.GetArrayFromImage(to_lps(ph.ct))
    labels = sitk.GetArrayFromImage(to_lps(ph.labels))
    sp = to_lps(ph.ct).GetSpacing()
    print(f"phantom {seed}: {ph.ct.GetSize()} in {seconds:.1f} s, phase {ph.properties['phase']}, liver "
          f"{ph.properties['liver_hu']} HU {ph.properties['liver_volume_ml']} mL, tumours "
          f"{[(t['contrast'], round(t['radius_mm'], 1)) for t in ph.tumors]}")
    tumor_slices = [int(t["center_kji"][0]) for t in ph.tumors][:2] if ph.tumors else []
    levels = sorted(set([int(ct.shape[0] - 3)] + liver_levels(labels, 3) + tumor_slices))
    panels = [axial(ct, labels, k, sp, 1.0) for k in levels]
    save_png(row(panels), out / f"phantom_{seed}_axial.png")
    plain = [axial(ct, None, k, sp, 1.0) for k in levels[:3]]
    save_png(row(plain), out / f"phantom_{seed}_axial_plain.png")
    j = int(np.mean(np.nonzero(labels)[1])) if labels.any() else ct.shape[1] // 2
    save_png(row([coronal(ct, labels, j, sp, 1.0), coronal(ct, None, j, sp, 1.0)]),
             out / f"phantom_{seed}_coronal.png")
    render_neighbours(ph, out / f"phantom_{seed}_neighbours.png")


def render_neighbours(ph, path: Path) -> None:
    """The axial slice where the stomach lies most against the liver, plain and with outlines."""
    ct = sitk.GetArrayFromImage(to_lps(ph.ct))
    labels = sitk.GetArrayFromImage(to_lps(ph.labels))
    organs = sitk.GetArrayFromImage(to_lps(ph.organs))
    sp = to_lps(ph.ct).GetSpacing()
    stomach = organs == ORGAN["stomach"]
    contact = (ndimage.binary_dilation(labels > 0) & stomach).sum(axis=(1, 2))
    k = int(np.argmax(contact)) if contact.any() else int(np.argmax(stomach.sum(axis=(1, 2))))
    outlined = overlay(window(ct[k]), labels[k])
    for name, color in NEIGHBOUR_RGB.items():
        mask = organs[k] == ORGAN[name]
        outlined[mask & ~ndimage.binary_erosion(mask)] = color
    size = (ct.shape[1] * sp[1], ct.shape[2] * sp[0])
    save_png(row([axial(ct, None, k, sp, 1.0), resize(outlined, *size)]), path)
    p = ph.properties
    print(f"  stomach {p['stomach_filling']} ({p['stomach_content_hu']} HU, {p['stomach_volume_ml']} mL), touches "
          f"the liver: {p['stomach_touches_liver']}; duodenum {p['duodenum_content']}, colon {p['colon_content']}; "
          f"face to face with the liver: {', '.join(p['liver_neighbours'])}")


def render_real(out: Path, seed: int) -> None:
    for name in ("ts_upper_abdomen_3mm", "ts_dicom_upper_abdomen"):
        if not has_shared_case(SHARED, name):
            print(f"skipped {name}: not in {SHARED}")
            continue
        ct, liver = load_shared_case(SHARED, name)
        new_ct, labels, infos = insert_tumors_image(ct, liver, seed=seed, n_tumors=6)
        print(f"real {name}: tumours {[(t['contrast'], round(t['diameter_mm'], 1), t['n_voxels']) for t in infos]}")
        before = sitk.GetArrayFromImage(to_lps(ct))
        after = sitk.GetArrayFromImage(to_lps(new_ct))
        lab = sitk.GetArrayFromImage(to_lps(labels))
        sp = to_lps(ct).GetSpacing()
        lps_labels = to_lps(labels)
        ks = [int(lps_labels.TransformPhysicalPointToIndex(t["center_lps_mm"])[2]) for t in infos][:3]
        ks = ks or liver_levels(lab, 2)
        rows = [row([axial(before, None, k, sp, 0.8), axial(after, None, k, sp, 0.8), axial(after, lab, k, sp, 0.8)])
                for k in sorted(set(ks))]
        save_png(column(rows), out / f"real_{name}_tumors.png")


def render_comparison(out: Path, seeds: Sequence[int]) -> None:
    """Real CT slices (top row) beside phantoms at 3 mm, at the same relative levels of the liver."""
    if not has_shared_case(SHARED, "ts_upper_abdomen_3mm"):
        print(f"skipped comparison: ts_upper_abdomen_3mm not in {SHARED}")
        return
    real_ct, real_reference = load_shared_case(SHARED, "ts_upper_abdomen_3mm")
    real_image = to_lps(real_ct)
    real = sitk.GetArrayFromImage(real_image)
    real_liver = sitk.GetArrayFromImage(to_lps(real_reference))
    sp = real_image.GetSpacing()
    rows = [row([axial(real, None, k, sp, 1.0) for k in liver_levels(real_liver, 4)[::-1]])]
    coronals = []
    if has_shared_case(SHARED, "ts_abdomen_3mm"):
        whole = sitk.GetArrayFromImage(to_lps(load_shared_case(SHARED, "ts_abdomen_3mm")[0]))
        coronals.append(coronal(whole, None, whole.shape[1] // 2 + 5, (3.0, 3.0, 3.0), 1.0))
    for seed in seeds:
        ph = make_phantom(seed, spacing=(3.0, 3.0, 3.0), size_mm=(366, 303, 336), n_tumors=0)
        fake = sitk.GetArrayFromImage(to_lps(ph.ct))
        labels = sitk.GetArrayFromImage(to_lps(ph.labels))
        rows.append(row([axial(fake, None, k, (3.0, 3.0, 3.0), 1.0) for k in liver_levels(labels, 4)[::-1]]))
        j = int(np.mean(np.nonzero(labels)[1]))
        coronals.append(coronal(fake, None, j, (3.0, 3.0, 3.0), 1.0))
    save_png(column(rows), out / "compare_axial.png")
    save_png(row(coronals), out / "compare_coronal.png")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "work_tmp" / "synth_examples")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 3.0])
    parser.add_argument("--tumors", type=int, default=3)
    args = parser.parse_args(argv)
    for seed in args.seeds:
        render_phantom(seed, args.out, args.spacing, args.tumors)
    render_real(args.out, seed=args.seeds[0])
    render_comparison(args.out, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
