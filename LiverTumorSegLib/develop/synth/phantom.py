"""A synthetic, labelled CT phantom of the trunk (abdomen and chest) in LPS patient coordinates.

The phantom is built on an axial grid (i = patient left, j = posterior, k = superior) from
randomly sized and placed parts calibrated on the real CTs of ../shared/data: air, an
elliptic body with subcutaneous fat, a muscle wall with ribs, the spine, paraspinal and psoas
muscles, lungs above a two-domed diaphragm, aorta and IVC, kidneys, spleen, pancreas, portal
vein, bowel loops and the liver in the patient's right upper abdomen with branching portal and
hepatic veins. The liver's neighbours lie against it as in patients, with nothing between, and
are never labelled liver: the stomach (filled per seed with food at soft-tissue density, food
under an air-fluid level, water, air, positive oral contrast, or collapsed; for most seeds
pressed against the left lobe), the duodenum and the hepatic flexure of the colon under its
inferior surface (the stomach, duodenum and colon are drawn first, the liver wraps around
them), the gallbladder sunk into its fossa, the right kidney behind it. ``Phantom.properties``
says the stomach's filling and which tissues touch the liver. Above the diaphragm: the heart (four
chambers, myocardium, epicardial fat) resting on the diaphragm over the liver's left lobe, the
ascending aorta, arch and its branches, pulmonary trunk and arteries, SVC and pulmonary veins,
trachea and bronchi, oesophagus, branching pulmonary vessels in the lungs, sternum and
pectoral muscles. Then synthetic liver tumours (:mod:`.tumors`), partial-volume blur and CT
noise. HU values follow a random contrast phase (native, arterial, portal venous, delayed).
The field of view is an abdominal, upper-abdominal or chest CT (``view``). Everything is drawn
from one seed; the chest comes from a second stream spawned from it, so the abdomen of a
seed is the same with or without it, and the stomach, duodenum and colon from a third.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ... import LIVER_LABEL, TUMOR_LABEL
from ...errors import LiverTumorSegError
from ...geometry import Geometry
from .tumors import insert_tumors

# Tissue ids of ``Phantom.organs`` (index = id).
ORGAN_NAMES: Tuple[str, ...] = (
    "air", "subcutaneous_fat", "muscle", "visceral_fat", "bone", "lung", "heart", "aorta", "ivc",
    "portal_vein", "kidney", "spleen", "stomach", "bowel", "pancreas", "gallbladder", "liver",
    "hepatic_vessel", "spinal_canal", "table", "liver_tumor", "bladder", "retroperitoneal_fat",
    "pericardial_fat", "pulmonary_vessel", "airway", "esophagus", "mediastinal_fat",
)
ORGAN = {name: index for index, name in enumerate(ORGAN_NAMES)}
_RESERVED = 255  # an organ id kept free for a moment while the liver is drawn (fat it must not take)
PHASES: Tuple[str, ...] = ("native", "arterial", "portal_venous", "delayed")
# Fields of view: where the scan sits along the body (see make_phantom).
VIEWS: Tuple[str, ...] = ("abdomen", "upper_abdomen", "thorax")
_PHASE_PROBABILITIES = (0.2, 0.15, 0.55, 0.10)
HU_MIN, HU_MAX = -1024, 3071

# HU ranges (low, high) per contrast phase, measured on ../shared/data (ts_upper_abdomen_3mm is
# native: liver 47-49, kidney ~20, aorta ~40; ts_dicom_upper_abdomen is portal venous: liver 93,
# aorta 155, spleen 71-77, hepatic veins ~135) and widened with textbook values.
_PHASE_HU: Dict[str, Dict[str, Tuple[float, float]]] = {
    "native": dict(liver=(45, 65), spleen=(38, 52), kidney_cortex=(25, 38), kidney_medulla=(20, 32),
                   aorta=(35, 50), portal=(35, 48), hepatic_vein=(33, 46), ivc=(33, 46), pancreas=(30, 48),
                   bowel_wall=(30, 48), blood=(35, 50), myocardium=(40, 55), muscle=(40, 55)),
    "arterial": dict(liver=(60, 85), spleen=(95, 150), kidney_cortex=(170, 260), kidney_medulla=(70, 110),
                     aorta=(250, 420), portal=(100, 160), hepatic_vein=(45, 75), ivc=(60, 110),
                     pancreas=(100, 140), bowel_wall=(70, 110), blood=(200, 350), myocardium=(80, 120),
                     muscle=(45, 60)),
    "portal_venous": dict(liver=(90, 130), spleen=(90, 130), kidney_cortex=(150, 200), kidney_medulla=(130, 180),
                          aorta=(130, 200), portal=(140, 200), hepatic_vein=(125, 180), ivc=(110, 160),
                          pancreas=(80, 120), bowel_wall=(70, 110), blood=(130, 190), myocardium=(90, 120),
                          muscle=(45, 65)),
    "delayed": dict(liver=(70, 95), spleen=(70, 95), kidney_cortex=(120, 170), kidney_medulla=(140, 200),
                    aorta=(100, 140), portal=(100, 140), hepatic_vein=(100, 140), ivc=(100, 140),
                    pancreas=(70, 95), bowel_wall=(60, 90), blood=(100, 140), myocardium=(80, 100),
                    muscle=(45, 60)),
}
_FIXED_HU: Dict[str, Tuple[float, float]] = dict(
    fat=(-115, -85), lung=(-880, -820), cortical_bone=(650, 1100), cancellous_bone=(130, 260), disc=(75, 100),
    csf=(5, 20), cartilage=(110, 200), gas=(-1000, -960), fluid=(0, 25), bile=(0, 20), urine=(0, 15),
    table=(200, 500), skin=(20, 50),
)
# What fills the stomach, with its share of the seeds: food at soft-tissue density (as dense as
# liver parenchyma in some phases: the hard negative that real scans show), food under an
# air-fluid level, water, air, positive oral contrast, or nothing (collapsed, thick wall).
STOMACH_FILLINGS: Tuple[str, ...] = ("food", "mixed", "water", "air", "contrast", "collapsed")
_STOMACH_FILLING_PROBABILITIES = (0.28, 0.14, 0.16, 0.12, 0.14, 0.16)
# HU of the stomach's contents: mottled food, oral contrast (denser where it settles), water.
_STOMACH_CONTENT_HU: Dict[str, Tuple[float, float]] = dict(food=(30, 70), contrast=(150, 400), water=(0, 25))
# How much brighter than the bowel wall the enhancing gastric mucosa is, per phase.
_MUCOSA_BOOST_HU: Dict[str, Tuple[float, float]] = dict(native=(0, 5), arterial=(25, 60), portal_venous=(10, 35),
                                                        delayed=(0, 15))
# Share of the seeds whose stomach is placed against the liver's left lobe (no fat between).
_STOMACH_TOUCH_PROBABILITY = 0.8
# Texture amplitude (HU std of a smooth field) per tissue.
_TEXTURE_HU = dict(subcutaneous_fat=5, muscle=6, visceral_fat=10, bone=40, lung=25, heart=5, aorta=2, ivc=3,
                   portal_vein=2, kidney=6, spleen=5, stomach=5, bowel=10, pancreas=14, gallbladder=2, liver=3,
                   hepatic_vessel=2, spinal_canal=3, bladder=2, retroperitoneal_fat=10, pericardial_fat=8,
                   pulmonary_vessel=3, airway=3, esophagus=5, mediastinal_fat=10)


@dataclass
class Phantom:
    """A synthetic CT (int16 HU), its labels (0 background, 1 liver, 2 tumour) and what was drawn."""

    ct: sitk.Image
    labels: sitk.Image
    tumors: List[dict]
    organs: Optional[sitk.Image] = None  # uint8 tissue ids, see ORGAN_NAMES
    properties: Dict = field(default_factory=dict)  # phase, HU values, body size, ...


def make_phantom(seed: int, size_mm: Tuple[float, float, float] = (360, 300, 240),
                 spacing: Tuple[float, float, float] = (1.5, 1.5, 3.0),
                 n_tumors: Union[int, Tuple[int, int]] = (0, 4), direction: Optional[str] = None,
                 noise_hu: float = 12.0, view: str = "abdomen", z_offset_mm: float = 0.0) -> Phantom:
    """Build the phantom drawn from ``seed``.

    ``size_mm`` and ``spacing`` run along the patient's L, P, S axes (x, y, z). ``n_tumors`` is a
    count or an inclusive (low, high) range. ``direction`` None gives an axial LPS grid (identity
    direction); an orientation code such as "RAS", "LPI" or "PIR" reorients the same physical
    image (ITK's DICOMOrient convention). ``noise_hu`` is the CT noise's standard deviation.
    ``view`` places the scan along the body: "abdomen" (the diaphragm's dome near the top, the
    heart's lower part in view for some seeds), "upper_abdomen" (the dome 60-120 mm below the
    top: the liver and the lower heart) or "thorax" (a chest CT: the dome near the bottom or
    below it, so little or no liver). ``z_offset_mm`` then moves the field of view that many mm
    further up the body (the anatomy moves down in the image); 0 keeps the view's placement.
    A seed keeps its body, contrast phase, HU values, diaphragm, chest, kidneys, spleen, liver
    placement and the stomach's filling in every view; the stomach's, duodenum's and colon's
    placement (pressed against the part of the liver in view) and the parts drawn after the liver
    (gallbladder, pancreas, bowel, tumours) may differ, since they follow how much of the liver is
    in view.

    Properties about the liver's neighbours: ``stomach_filling`` (one of STOMACH_FILLINGS),
    ``stomach_content_hu``, ``stomach_gas_fraction``, ``stomach_volume_ml``,
    ``stomach_placed_against_liver`` (drawn) and ``stomach_touches_liver`` (measured: a stomach
    voxel face to face with a liver voxel), ``duodenum_content``, ``colon_content`` and
    ``liver_neighbours`` (the tissues face to face with the liver, e.g. to report hard negatives).
    """
    _check_arguments(size_mm, spacing, n_tumors, direction, noise_hu, view, z_offset_mm)
    rng = np.random.default_rng(seed)
    chest_stream, neighbour_stream = np.random.SeedSequence(seed).spawn(2)
    builder = _Builder(rng, size_mm, spacing, np.random.default_rng(chest_stream), view=view,
                       z_offset_mm=z_offset_mm, neighbour_rng=np.random.default_rng(neighbour_stream))
    builder.build_anatomy()
    hu = builder.hu
    builder.add_texture()
    _partial_volume_blur(rng, hu, builder.spacing_kji)
    if isinstance(n_tumors, (int, np.integer)):
        count = int(n_tumors)
    else:
        count = int(rng.integers(n_tumors[0], n_tumors[1] + 1))
    liver = np.isin(builder.organ, (ORGAN["liver"], ORGAN["hepatic_vessel"]))
    tumor_mask = np.zeros(hu.shape, dtype=np.uint8)
    infos: List[dict] = []
    if count > 0 and liver.any():
        hu, tumor_mask, infos = insert_tumors(hu, liver, builder.spacing_kji, rng, count)
    _add_noise(rng, hu, noise_hu, builder.spacing_kji)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    ct_array = np.rint(hu).astype(np.int16)
    del hu
    labels = np.zeros(ct_array.shape, dtype=np.uint8)
    labels[liver] = LIVER_LABEL
    labels[tumor_mask > 0] = TUMOR_LABEL
    builder.organ[tumor_mask > 0] = ORGAN["liver_tumor"]

    geometry = builder.geometry
    for info in infos:
        info["center_lps_mm"] = tuple(float(v) for v in geometry.index_to_lps(np.asarray(info["center_kji"])))
    images = [_image(a, geometry) for a in (ct_array, labels, builder.organ)]
    if direction is not None and direction.upper() != "LPS":
        images = [sitk.DICOMOrient(image, direction.upper()) for image in images]
        for info in infos:
            index = images[0].TransformPhysicalPointToIndex(info["center_lps_mm"])
            info["center_kji"] = tuple(int(v) for v in reversed(index))
    properties = dict(builder.properties, seed=seed, n_tumors=len(infos), noise_hu=noise_hu, view=view,
                      z_offset_mm=float(z_offset_mm))
    return Phantom(ct=images[0], labels=images[1], tumors=infos, organs=images[2], properties=properties)


# ---------------------------------------------------------------------------------------------

# The organs a liver model takes for liver where they touch it (the leaks measured on held-out
# phantoms: bowel, IVC, stomach, gallbladder, kidney, spleen, pancreas, aorta, heart).
LIVER_NEIGHBOURS: Tuple[str, ...] = ("heart", "aorta", "ivc", "kidney", "spleen", "stomach", "bowel", "pancreas",
                                     "gallbladder", "esophagus")


def liver_neighbours(organs: sitk.Image, within_mm: float = 20.0) -> sitk.Image:
    """The parts of the liver's neighbour organs (LIVER_NEIGHBOURS) within ``within_mm`` of the
    liver (its vessels and tumours included), from a phantom's tissue ids (uint8 0/1, its grid):
    where a liver model's leak goes."""
    tissue = sitk.GetArrayViewFromImage(organs)
    liver = np.isin(tissue, (ORGAN["liver"], ORGAN["hepatic_vessel"], ORGAN["liver_tumor"]))
    region = np.zeros(tissue.shape, bool)
    if liver.any():
        distance = ndimage.distance_transform_edt(~liver, sampling=organs.GetSpacing()[::-1])
        region = np.isin(tissue, [ORGAN[name] for name in LIVER_NEIGHBOURS]) & (distance <= within_mm)
    image = sitk.GetImageFromArray(region.astype(np.uint8))
    image.CopyInformation(organs)
    return image


def _check_arguments(size_mm, spacing, n_tumors, direction, noise_hu, view="abdomen", z_offset_mm=0.0) -> None:
    if len(size_mm) != 3 or min(size_mm) <= 0:
        raise LiverTumorSegError(f"size_mm={size_mm} must be three positive extents in mm (x, y, z)")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise LiverTumorSegError(f"spacing={spacing} must be three positive voxel sizes in mm (x, y, z)")
    if any(e / s < 8 for e, s in zip(size_mm, spacing)):
        raise LiverTumorSegError(f"size_mm={size_mm} with spacing={spacing} gives fewer than 8 voxels on an axis; "
                                 "use a larger size or a finer spacing")
    counts = (int(n_tumors),) if isinstance(n_tumors, (int, np.integer)) else tuple(n_tumors)
    if len(counts) not in (1, 2) or min(counts) < 0 or (len(counts) == 2 and counts[0] > counts[1]):
        raise LiverTumorSegError(f"n_tumors={n_tumors} must be a count >= 0 or a (low, high) range")
    if direction is not None and not _is_orientation_code(direction):
        raise LiverTumorSegError(f"direction={direction!r} is not an orientation code; use three letters, one "
                                 "of each pair R/L, A/P, S/I, e.g. 'LPS', 'RAS' or 'PIR'")
    if noise_hu < 0:
        raise LiverTumorSegError(f"noise_hu={noise_hu} must be >= 0")
    if view not in VIEWS:
        raise LiverTumorSegError(f"view={view!r} is not a field of view; use one of {', '.join(VIEWS)}")
    if not math.isfinite(float(z_offset_mm)):
        raise LiverTumorSegError(f"z_offset_mm={z_offset_mm} must be a finite number of mm")


def _is_orientation_code(code: str) -> bool:
    """Three letters naming each of the axis pairs R/L, A/P, S/I once, e.g. 'LPS' or 'PIR'."""
    pairs = ("RL", "AP", "SI")
    found = [next((i for i, pair in enumerate(pairs) if letter in pair), -1) for letter in str(code).upper()]
    return len(found) == 3 and sorted(found) == [0, 1, 2]


def _stomach_filling(draw: float) -> str:
    """The stomach's filling for a uniform draw in [0, 1) (STOMACH_FILLINGS by their shares)."""
    edges = np.cumsum(_STOMACH_FILLING_PROBABILITIES)
    return STOMACH_FILLINGS[min(int(np.searchsorted(edges, draw, side="right")), len(STOMACH_FILLINGS) - 1)]


def _path_gap(points: np.ndarray, radii: Sequence[float], cloud: np.ndarray) -> Tuple[float, np.ndarray]:
    """Signed gap (mm) between a tube through ``points`` (x, y, z mm) with ``radii`` and the
    nearest point of ``cloud`` (negative: that point lies inside the tube), and the unit
    direction from the tube's axis towards that point."""
    best, direction = math.inf, np.zeros(3)
    for p0, p1, r0, r1 in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        seg = p1 - p0
        t = np.clip((cloud - p0) @ seg / max(float(seg @ seg), 1e-6), 0.0, 1.0)
        diff = cloud - (p0 + t[:, None] * seg)
        norm = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        gap = norm - (r0 + (r1 - r0) * t)
        i = int(np.argmin(gap))
        if gap[i] < best:
            best, direction = float(gap[i]), diff[i] / max(float(norm[i]), 1e-6)
    return best, direction


def _image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    return geometry.apply_to(image)


def _upsample_axis(values: np.ndarray, axis: int, n_out: int, step: float) -> np.ndarray:
    """Linear interpolation along ``axis`` at coarse positions 1, 1 + step, 1 + 2 step, ..."""
    position = 1.0 + np.arange(n_out, dtype=np.float64) * step
    low = np.floor(position).astype(int)
    frac = (position - low).astype(np.float32)
    shape = [1] * values.ndim
    shape[axis] = n_out
    frac = frac.reshape(shape)
    return np.take(values, low, axis=axis) * (1.0 - frac) + np.take(values, low + 1, axis=axis) * frac


class _SmoothField:
    """Smooth random field (unit std) with features of about ``scale_mm``, evaluated lazily on
    (z-chunks of) a grid by linear interpolation of coarse noise: cheap on large volumes."""

    def __init__(self, rng: np.random.Generator, shape: Sequence[int], spacing_kji: Sequence[float],
                 scale_mm: float) -> None:
        self.shape = tuple(int(n) for n in shape)
        # nodes every scale/4 mm (never finer than the grid), smoothed over scale/2 mm: the linear
        # interpolation between nodes then leaves no visible kinks in the field's level sets
        node_mm = [max(scale_mm / 4.0, s) for s in spacing_kji]
        self.steps = [s / n for s, n in zip(spacing_kji, node_mm)]
        coarse_shape = [int(math.ceil((n - 1) * st)) + 3 for n, st in zip(self.shape, self.steps)]
        sigma = [scale_mm / 2.0 / n for n in node_mm]
        coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), sigma, mode="wrap")
        coarse -= coarse.mean()
        self.coarse = coarse / max(float(coarse.std()), 1e-6)

    def chunk(self, k0: int, k1: int) -> np.ndarray:
        zs = self.coarse
        position = 1.0 + np.arange(k0, k1) * self.steps[0]
        low = np.floor(position).astype(int)
        frac = (position - low).astype(np.float32)[:, None, None]
        values = zs[low] * (1.0 - frac) + zs[low + 1] * frac
        values = _upsample_axis(values, 1, self.shape[1], self.steps[1])
        return _upsample_axis(values, 2, self.shape[2], self.steps[2])

    def full(self) -> np.ndarray:
        return self.chunk(0, self.shape[0])


def _partial_volume_blur(rng: np.random.Generator, hu: np.ndarray, spacing_kji: Sequence[float]) -> None:
    """Blur like a scanner: its point spread (mm, in-plane and slice profile) combined with the
    averaging over a voxel (a box of one voxel has a std of ~0.3 voxel)."""
    psf_mm = (rng.uniform(0.6, 1.5), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
    psf_mm = (psf_mm[0], psf_mm[1], psf_mm[1])
    sigma = [math.sqrt(0.3 ** 2 + (p / s) ** 2) for p, s in zip(psf_mm, spacing_kji)]
    hu[...] = ndimage.gaussian_filter(hu, sigma, mode="nearest")


def _add_noise(rng: np.random.Generator, hu: np.ndarray, noise_hu: float, spacing_kji: Sequence[float]) -> None:
    """Gaussian CT noise of std ``noise_hu``; for half of the seeds correlated in-plane over
    0.4-0.9 mm, like a reconstruction kernel (invisible on coarse grids)."""
    if noise_hu <= 0:
        return
    correlation_mm = rng.uniform(0.4, 0.9) if rng.random() < 0.5 else 0.0
    correlation = correlation_mm / min(spacing_kji[1], spacing_kji[2])
    if correlation < 0.3:
        correlation = 0.0
    chunk = 32
    for k0 in range(0, hu.shape[0], chunk):
        noise = rng.standard_normal(hu[k0:k0 + chunk].shape, dtype=np.float32)
        if correlation > 0:
            noise = ndimage.gaussian_filter(noise, (0, correlation, correlation), mode="wrap")
            noise /= max(float(noise.std()), 1e-6)
        hu[k0:k0 + chunk] += noise * np.float32(noise_hu)


def _rotation(z_deg: float = 0.0, y_deg: float = 0.0, x_deg: float = 0.0) -> np.ndarray:
    """Columns = the local axes in world (x, y, z) coordinates."""
    a, b, c = np.radians([z_deg, y_deg, x_deg])
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rx = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    return rz @ ry @ rx


class _Builder:
    """Draws the anatomy into ``hu`` (float32) and ``organ`` (uint8 tissue ids) on an LPS grid."""

    def __init__(self, rng: np.random.Generator, size_mm, spacing, chest_rng: np.random.Generator,
                 view: str = "abdomen", z_offset_mm: float = 0.0,
                 neighbour_rng: Optional[np.random.Generator] = None) -> None:
        self.rng = rng
        self.chest_rng = chest_rng  # the chest's own stream: the abdomen's draws stay as they were
        # the stomach's, duodenum's and colon's own stream: their shape and contents do not depend
        # on what was drawn before them (how much of the liver is in view)
        self.neighbour_rng = np.random.default_rng(0) if neighbour_rng is None else neighbour_rng
        self.view = view
        self.z_offset_mm = float(z_offset_mm)
        self.spacing_xyz = np.asarray(spacing, dtype=np.float64)
        self.spacing_kji = tuple(float(s) for s in self.spacing_xyz[::-1])
        nx, ny, nz = (max(8, int(round(e / s))) for e, s in zip(size_mm, spacing))
        self.shape = (nz, ny, nx)
        fov = np.array([nx, ny, nz]) * self.spacing_xyz
        center = np.array([rng.uniform(-20, 20), rng.uniform(-60, 60), rng.uniform(-700, 100)])
        origin = center - (fov - self.spacing_xyz) / 2.0
        self.geometry = Geometry((nx, ny, nz), tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                                 (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        self.x = (origin[0] + np.arange(nx) * spacing[0]).astype(np.float32)
        self.y = (origin[1] + np.arange(ny) * spacing[1]).astype(np.float32)
        self.z = (origin[2] + np.arange(nz) * spacing[2]).astype(np.float32)
        self.fov = fov
        self.hu = np.full(self.shape, -1000.0, dtype=np.float32)
        self.organ = np.zeros(self.shape, dtype=np.uint8)
        self.properties: Dict = {}
        self._draw_parameters(center)
        self._draw_chest_parameters()

    # ----- random parameters -------------------------------------------------------------
    def _u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def _draw_parameters(self, fov_center: np.ndarray) -> None:
        u = self._u
        rng = self.rng
        a0 = u(145, 195)
        b0 = a0 * u(0.62, 0.8)
        scale = min(1.0, 0.47 * self.fov[0] / a0, 0.44 * self.fov[1] / b0)
        self.s = s = scale * u(0.95, 1.05)
        self.sz = sz = u(0.88, 1.12) * math.sqrt(scale)
        self.A, self.B = a0 * scale, b0 * scale
        self.cx = fov_center[0] + u(-0.03, 0.03) * self.fov[0]
        self.cy = fov_center[1] + u(-0.04, 0.02) * self.fov[1]
        self.zd = self._dome_height(rng.random())  # top of the right diaphragm dome
        self.phase = str(rng.choice(PHASES, p=_PHASE_PROBABILITIES))
        self.values = {name: u(*rng_range) for name, rng_range in _PHASE_HU[self.phase].items()}
        self.values.update({name: u(*rng_range) for name, rng_range in _FIXED_HU.items()})
        self.fatty_liver = bool(rng.random() < 0.12)
        if self.fatty_liver:
            self.values["liver"] -= u(15, 40)
        # body wall
        self.fat_sc = u(6, 38) * s
        self.fat_anisotropy = (u(-0.3, 0.3), u(-0.25, 0.35))
        self.muscle_wall = u(6, 12) * s
        self.body_wobble = [(u(0.0, 0.03), u(120, 300), u(0, 2 * math.pi)) for _ in range(2)]
        # spine
        self.spine_x = self.cx + u(-4, 4) * s
        self.spine_y = self.cy + u(0.28, 0.38) * self.B
        self.vert_rx, self.vert_ry = u(19, 25) * s, u(15, 20) * s
        self.canal_r = u(7, 9) * s
        self.vert_pitch = u(28, 34) * sz
        self.disc_h = u(6, 9) * sz
        self.vert_phase = u(0, self.vert_pitch)
        # vessels
        self.aorta_r = u(9, 13) * s
        self.aorta_dx = u(4, 16) * s
        self.ivc_dx = u(22, 36) * s
        self.ivc_r = (u(10, 14) * s, u(7, 11) * s)
        self.ivc_top = (self.spine_x - self.ivc_dx - 6.0 * s,  # (x, y) where it meets the hepatic veins
                        self.spine_y - self.vert_ry - self.ivc_r[1] - 22.0 * s)
        # ribs
        self.rib_pitch = u(28, 36) * sz
        self.rib_descent = u(150, 230) * sz
        self.rib_phase = u(0, self.rib_pitch)
        self.rib_thick = u(5, 7) * s
        self.rib_height = u(4, 5.5) * s
        # diaphragm
        self.left_dome_drop = u(5, 25) * sz
        self.dome_fall = u(22, 40) * sz
        self.recess = u(30, 50) * sz
        self.extras = dict(arms=bool(rng.random() < 0.25), table=bool(rng.random() < 0.7),
                           gallbladder=bool(rng.random() < 0.75),
                           stomach_filling=_stomach_filling(float(rng.random())))
        self.properties = dict(phase=self.phase, fatty_liver=self.fatty_liver,
                               body_semi_axes_mm=(round(float(self.A), 1), round(float(self.B), 1)),
                               liver_hu=round(self.values["liver"], 1), dome_z_mm=round(float(self.zd), 1),
                               values_hu={k: round(v, 1) for k, v in self.values.items()}, **self.extras)

    def _dome_height(self, draw: float) -> float:
        """Height (z mm) of the right dome's top for the view; two draws in every view."""
        u, sz = self._u, self.sz
        top, bottom, extent = float(self.z[-1]), float(self.z[0]), float(self.fov[2])
        if self.view == "abdomen":
            # where the scan starts above the dome: mostly just above it (abdominal CT), sometimes
            # high in the chest (chest-abdomen), sometimes just below it (dome cut off)
            drop = u(10, 70) if draw < 0.7 else (u(70, 160) if draw < 0.9 else u(-30, 10))
            zd = top - min(drop * sz, 0.5 * extent)
        elif self.view == "upper_abdomen":  # the liver and the heart's lower part
            zd = top - min(u(60, 120) * sz, 0.7 * extent)
        else:  # a chest CT: the dome near the bottom, or out of view below it
            zd = min(bottom + u(-20, 35) * sz, top - (40.0 + 100.0 * draw) * sz)
            zd = max(zd, top - 240.0 * sz)  # the top no higher than the lungs' apices
        return zd - self.z_offset_mm

    def _draw_chest_parameters(self) -> None:
        """Sizes and heights of the chest's parts, from the chest's own random stream."""
        rng = self.chest_rng

        def u(lo: float, hi: float) -> float:
            return float(rng.uniform(lo, hi))

        s, sz, zd = self.s, self.sz, self.zd
        arch_z = zd + u(150, 185) * sz
        self.chest = dict(
            arch_z=arch_z, carina_z=arch_z - u(12, 28) * sz, pa_bifurcation_z=zd + u(100, 125) * sz,
            apex_z=zd + u(220, 270) * sz, xiphoid_z=zd - u(20, 45) * sz, manubrium_z=arch_z + u(0, 25) * sz,
            sternum_half=u(11, 17) * s, sternum_thick=u(9, 13) * s, pectoral=u(4, 18) * s,
            heart_size=u(1.05, 1.3), heart_dx=u(0.06, 0.16) * self.A, heart_tilt=u(15, 30),
            epicardial_fat=u(0.5, 4.0) * s, fat_pad=u(0.0, 16.0) * s,
            ascending_r=u(13, 17) * s, ascending_dx=u(-10, 2) * s, trunk_r=u(12, 15) * s, svc_r=u(8, 11) * s,
            trachea_r=u(8, 10.5) * s, esophagus_r=u(6, 8) * s, esophagus_air=bool(rng.random() < 0.4),
            sleeve=u(4, 9) * s, mediastinum_half=u(9, 16) * s,
            airway_wall_hu=u(20, 80), artery_scale=u(0.85, 1.0), vein_scale=u(0.9, 1.0))

    # ----- helpers ---------------------------------------------------------------------------
    def _box(self, lo, hi):
        """Index slices and (z, y, x) mm coordinate vectors of the box [lo, hi] (x, y, z mm)."""
        slices, coords = [], []
        for axis_xyz, vec in ((2, self.z), (1, self.y), (0, self.x)):
            step = self.spacing_xyz[axis_xyz]
            first = int(math.floor((lo[axis_xyz] - vec[0]) / step))
            last = int(math.ceil((hi[axis_xyz] - vec[0]) / step)) + 1
            first, last = max(first, 0), min(last, vec.size)
            if last <= first:
                return None
            slices.append(slice(first, last))
            coords.append(vec[first:last])
        z, y, x = coords
        return tuple(slices), z[:, None, None], y[None, :, None], x[None, None, :]

    @staticmethod
    def _rho2(z, y, x, center, axes, rotation) -> np.ndarray:
        d = (x - np.float32(center[0]), y - np.float32(center[1]), z - np.float32(center[2]))
        total = None
        for a in range(3):
            local = (np.float32(rotation[0, a]) * d[0] + np.float32(rotation[1, a]) * d[1]
                     + np.float32(rotation[2, a]) * d[2]) / np.float32(axes[a])
            total = local * local if total is None else total + local * local
        return total

    def _ellipsoid(self, center, axes, rotation=None, margin: float = 1.0):
        """(slices, rho^2, (z, y, x) coordinates) of an ellipsoid's bounding box; rho^2 <= 1 inside.
        None when the box lies outside the volume (callers skip the part)."""
        rotation = np.eye(3) if rotation is None else rotation
        reach = np.abs(rotation) @ np.asarray(axes) * margin
        box = self._box(np.asarray(center) - reach, np.asarray(center) + reach)
        if box is None:
            return None
        slices, z, y, x = box
        return slices, self._rho2(z, y, x, center, axes, rotation), (z, y, x)

    def _paint(self, slices, mask: np.ndarray, organ: str, value) -> None:
        organ_view = self.organ[slices]
        hu_view = self.hu[slices]
        organ_view[mask] = ORGAN[organ]
        hu_view[mask] = value if np.isscalar(value) else np.asarray(value, dtype=np.float32)[mask]

    def _allowed(self, slices, *organs: str) -> np.ndarray:
        view = self.organ[slices]
        allowed = view == ORGAN[organs[0]]
        for organ in organs[1:]:
            allowed |= view == ORGAN[organ]
        return allowed

    def _tube(self, points: Sequence[Sequence[float]], radii: Sequence[float], organ: str, value: float,
              allowed: Sequence[str]) -> None:
        """A tube through ``points`` (x, y, z mm) with radii tapering linearly along each segment."""
        for p0, p1, r0, r1 in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
            p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
            reach = max(r0, r1) + 1.0
            box = self._box(np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach)
            if box is None:
                continue
            slices, z, y, x = box
            seg = p1 - p0
            length_sq = float(seg @ seg) or 1e-6
            t = ((x - p0[0]) * seg[0] + (y - p0[1]) * seg[1] + (z - p0[2]) * seg[2]) / np.float32(length_sq)
            t = np.clip(t, 0.0, 1.0)
            dist_sq = ((x - (p0[0] + t * seg[0])) ** 2 + (y - (p0[1] + t * seg[1])) ** 2
                       + (z - (p0[2] + t * seg[2])) ** 2)
            radius = r0 + (r1 - r0) * t
            inside = (dist_sq <= radius * radius) & self._allowed(slices, *allowed)
            self._paint(slices, inside, organ, value)

    # ----- anatomy --------------------------------------------------------------------------
    def build_anatomy(self) -> None:
        self._diaphragm_map()
        self._body_slices()
        if self.extras["arms"]:
            self._arms()
        if self.extras["table"]:
            self._table()
        self._chest()
        self._kidneys()
        self._spleen()
        self._liver()
        self._liver_vessels()
        if self.extras["gallbladder"]:
            self._gallbladder()
        self._pancreas_and_veins()
        self._bowel()
        self._bladder()
        neighbours = self._liver_neighbours()
        self.properties.update(liver_neighbours=neighbours, stomach_touches_liver="stomach" in neighbours)
        liver = np.isin(self.organ, (ORGAN["liver"], ORGAN["hepatic_vessel"]))
        self.properties["liver_volume_ml"] = round(float(liver.sum()) * self.geometry.voxel_volume_ml, 1)
        heart = int(np.count_nonzero(self.organ == ORGAN["heart"]))
        self.properties["heart_volume_ml"] = round(heart * self.geometry.voxel_volume_ml, 1)

    def _diaphragm_map(self) -> None:
        """Height (z mm) of the diaphragm's lower surface over the axial plane: two domes that
        fall towards the walls and much lower posteriorly (the costophrenic recesses)."""
        X = self.x[None, :] - np.float32(self.cx)
        Y = self.y[:, None] - np.float32(self.cy)
        A, B = self.A, self.B
        right = self.zd - self.dome_fall * (((X + 0.35 * A) / (0.55 * A)) ** 2 + (Y / (0.7 * B)) ** 2)
        left = (self.zd - self.left_dome_drop
                - self.dome_fall * (((X - 0.38 * A) / (0.55 * A)) ** 2 + ((Y - 0.05 * B) / (0.7 * B)) ** 2))
        posterior = np.clip(Y / B, 0.0, 1.0)
        surface = np.maximum(right, left) - self.recess * posterior ** 2
        lowest = self.zd - (60.0 + 50.0 * posterior) * self.sz
        self.diaphragm = np.maximum(surface, lowest).astype(np.float32)
        gy, gx = np.gradient(self.diaphragm, self.spacing_xyz[1], self.spacing_xyz[0])
        self.diaphragm_thickness = (4.0 * self.s * np.sqrt(1.0 + gx * gx + gy * gy)).astype(np.float32)

    def _body_slices(self) -> None:
        """Slice by slice: body, fat, muscle wall, ribs, lungs, diaphragm, spine, paraspinal and
        psoas muscles, aorta, IVC."""
        X = self.x[None, :] - np.float32(self.cx)
        Y = self.y[:, None] - np.float32(self.cy)
        radius = np.sqrt(X * X + Y * Y)
        angle = np.arctan2(np.abs(X), Y)  # 0 posterior midline .. pi anterior midline
        theta = np.arctan2(Y, X)
        anterior_excess, lateral_deficit = self.fat_anisotropy
        # sin(theta) > 0 posteriorly; cos(2 theta) > 0 laterally
        fat_thickness = self.fat_sc * (1.0 - anterior_excess * np.sin(theta)
                                       - 0.5 * lateral_deficit * np.cos(2 * theta))
        v = self.values
        xs, ys = self.spine_x, self.spine_y
        SX = self.x[None, :] - np.float32(xs)
        SY = self.y[:, None] - np.float32(ys)
        window, WX, WY = self._spine_window()
        for k, z in enumerate(self.z.astype(np.float64)):
            wob = 1.0 + sum(amp * math.sin(2 * math.pi * z / period + phase)
                            for amp, period, phase in self.body_wobble)
            a = self.A * wob
            b = self.B * (2.0 - wob) ** 0.5
            un, vn = X / np.float32(a), Y / np.float32(b)
            posterior = vn > 0
            rho = np.where(posterior, (np.abs(un) ** 3.2 + np.abs(vn) ** 3.2) ** (1 / 3.2), np.sqrt(un * un + vn * vn))
            depth = np.where(rho > 1e-3, radius * (1.0 - rho) / np.maximum(rho, 1e-3), 1e4)
            hu = self.hu[k]
            organ = self.organ[k]
            body = rho <= 1.0
            organ[body] = ORGAN["subcutaneous_fat"]
            hu[body] = v["fat"]
            skin = body & (depth < 1.5)
            hu[skin] = v["skin"]
            # ribs live in the wall from the costal margin up; the wall is thicker there
            rib_low = self.zd - self.sz * (150.0 - 95.0 * angle / math.pi)
            rib_level = np.clip((z - rib_low) / 20.0, 0.0, 1.0)
            wall_inner = fat_thickness + self.muscle_wall + rib_level * (self.rib_thick * 0.8)
            wall_outer = fat_thickness
            if z > self.zd - 20.0 * self.sz:  # the pectoral muscles thicken the wall outwards
                wall_outer = np.maximum(fat_thickness - self._pectoral(z, angle), np.minimum(fat_thickness, 2.5))
            wall = body & (depth >= wall_outer) & (depth < wall_inner)
            organ[wall] = ORGAN["muscle"]
            hu[wall] = v["muscle"]
            cavity = body & (depth >= wall_inner)
            above = z > self.diaphragm
            lung = cavity & (z > self.diaphragm + self.diaphragm_thickness)
            diaphragm = cavity & above & ~lung
            abdomen = cavity & ~above
            organ[abdomen] = ORGAN["visceral_fat"]
            hu[abdomen] = v["fat"]
            organ[diaphragm] = ORGAN["muscle"]
            hu[diaphragm] = v["muscle"]
            if z > self.chest["apex_z"] - 80.0 * self.sz:  # around the apices: muscles of the
                neck = lung & ~self._below_apex(z, X, Y)  # shoulder girdle outside, fat inside
                lung &= ~neck
                inner = neck & (depth >= wall_inner + 25.0 * self.s)
                organ[neck] = ORGAN["muscle"]
                hu[neck] = v["muscle"]
                organ[inner] = ORGAN["mediastinal_fat"]
                hu[inner] = v["fat"]
            organ[lung] = ORGAN["lung"]
            hu[lung] = v["lung"]
            self._ribs_in_slice(k, z, depth, angle, fat_thickness, rib_low, body)
            if z > self.chest["xiphoid_z"]:
                self._sternum_in_slice(k, z, X, Y, depth, fat_thickness, body)
            self._mediastinum_in_slice(k, z, SX, SY, lung)
            body_w = body[window]
            self._spine_in_slice(k, z, window, WX, WY, body_w)
            self._muscles_in_slice(k, z, window, WX, WY, body_w, (depth >= fat_thickness * 0.6)[window])
            self._great_vessels_in_slice(k, z, body)
            self._pelvis_in_slice(k, z, SX, SY, body)

    def _ribs_in_slice(self, k, z, depth, angle, fat_thickness, rib_low, body) -> None:
        band_start = fat_thickness + 0.2 * self.muscle_wall
        radial = (depth - band_start - self.rib_thick / 2.0) / (self.rib_thick / 2.0)
        stripe = np.mod(z + self.rib_descent * angle / math.pi - self.rib_phase, self.rib_pitch) - self.rib_pitch / 2.0
        across = stripe / self.rib_height
        e2 = radial * radial + across * across
        rib = body & (e2 <= 1.0) & (angle > 0.45) & (z >= rib_low) & (angle < 0.94 * math.pi)
        if not rib.any():
            return
        v = self.values
        cartilage = angle > 0.78 * math.pi
        cortex = e2 > 0.45
        value = np.where(cartilage, v["cartilage"], np.where(cortex, v["cortical_bone"], v["cancellous_bone"]))
        self.organ[k][rib] = ORGAN["bone"]
        self.hu[k][rib] = value[rib]

    def _mediastinum_in_slice(self, k, z, SX, SY, lung) -> None:
        """Fat in front of the spine (around the aorta and oesophagus) and, above the heart, a
        strip behind the sternum; the great vessels, trachea and oesophagus bring sleeves of fat."""
        if not lung.any():
            return
        s = self.s
        half = self.chest["mediastinum_half"]
        across = (SX - 6.0 * s) / (half + 12.0 * s)
        band = lung & (across * across + ((SY + self.vert_ry + 6.0 * s) / (30.0 * s)) ** 2 <= 1.0)
        if z > self.zd + 85.0 * self.sz:  # above the heart: a thin strip of fat behind the sternum
            band |= lung & (np.abs(SX - 4.0 * s) < np.float32(0.5 * half)) & (SY < -self.vert_ry - 40.0 * s)
        self.organ[k][band] = ORGAN["mediastinal_fat"]
        self.hu[k][band] = self.values["fat"]

    def _pectoral(self, z: float, angle: np.ndarray) -> np.ndarray:
        """Extra muscle (mm, outward into the subcutaneous fat) of the pectoral muscles over the
        front and sides of the chest."""
        reach = min(max((z - (self.zd - 20.0 * self.sz)) / (60.0 * self.sz), 0.0), 1.0)
        across = np.clip(1.0 - ((angle - 0.72 * math.pi) / (0.24 * math.pi)) ** 2, 0.0, 1.0)
        return np.float32(self.chest["pectoral"] * reach) * across

    def _below_apex(self, z: float, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Where the lungs may be near their apices: two shrinking discs; nothing above them."""
        c = self.chest
        fraction = (z - (c["apex_z"] - 80.0 * self.sz)) / (80.0 * self.sz)
        if fraction >= 1.0:
            return np.zeros(np.broadcast_shapes(X.shape, Y.shape), dtype=bool)
        radius = 0.6 * self.A * math.sqrt(max(1.0 - fraction, 0.0)) + 1e-3
        centre_y = self.cy + 0.05 * self.B
        left = (X - np.float32(0.45 * self.A)) ** 2 + (Y - np.float32(centre_y - self.cy)) ** 2
        right = (X + np.float32(0.45 * self.A)) ** 2 + (Y - np.float32(centre_y - self.cy)) ** 2
        return np.minimum(left, right) <= np.float32(radius * radius)

    def _sternum_in_slice(self, k, z, X, Y, depth, fat_thickness, body) -> None:
        """The sternum in the front wall: xiphoid (narrow) below, body, manubrium (wide) above."""
        c, v = self.chest, self.values
        if z < self.zd:
            half = c["sternum_half"] * (0.45 + 0.55 * (z - c["xiphoid_z"]) / max(self.zd - c["xiphoid_z"], 1e-3))
        elif z < c["manubrium_z"]:
            half = c["sternum_half"]
        else:
            half = c["sternum_half"] * 1.8
        front = fat_thickness + 0.3 * self.muscle_wall
        inside = (depth - front) / c["sternum_thick"]
        across = np.abs(X) / np.float32(half)
        sternum = body & (Y < 0) & (across <= 1.0) & (inside >= 0.0) & (inside <= 1.0)
        if not sternum.any():
            return
        edge = np.minimum(np.minimum(inside, 1.0 - inside) * c["sternum_thick"], (1.0 - across) * half)
        value = np.where(edge < 1.8 * self.s, np.float32(v["cortical_bone"]), np.float32(v["cancellous_bone"]))
        self.organ[k][sternum] = ORGAN["bone"]
        self.hu[k][sternum] = value[sternum]

    def _spine_window(self):
        """Index slices (y, x) of the window around the spine and its muscles, and the
        coordinates relative to the vertebral body's centre in it."""
        s = self.s
        y_lo, y_hi = self.spine_y - self.vert_ry - 45.0 * s, self.spine_y + self.vert_ry + 90.0 * s
        x_lo, x_hi = self.spine_x - 110.0 * s, self.spine_x + 110.0 * s
        wy = slice(int(np.searchsorted(self.y, y_lo)), int(np.searchsorted(self.y, y_hi)) + 1)
        wx = slice(int(np.searchsorted(self.x, x_lo)), int(np.searchsorted(self.x, x_hi)) + 1)
        SX = self.x[wx][None, :] - np.float32(self.spine_x)
        SY = self.y[wy][:, None] - np.float32(self.spine_y)
        return (wy, wx), SX, SY

    @staticmethod
    def _bar(SX, SY, p0, p1, half_width) -> np.ndarray:
        """2D mask of a rounded bar from p0 to p1 (mm, spine-relative)."""
        dx, dy = p1[0] - p0[0], p1[1] - p0[1]
        length_sq = dx * dx + dy * dy or 1e-6
        t = np.clip(((SX - p0[0]) * dx + (SY - p0[1]) * dy) / np.float32(length_sq), 0.0, 1.0)
        return (SX - p0[0] - t * dx) ** 2 + (SY - p0[1] - t * dy) ** 2 <= half_width * half_width

    def _spine_in_slice(self, k, z, window, SX, SY, body) -> None:
        v, s = self.values, self.s
        rx, ry, rc = self.vert_rx, self.vert_ry, self.canal_r
        hu, organ = self.hu[k][window], self.organ[k][window]
        in_vertebra = np.mod(z - self.vert_phase, self.vert_pitch)
        phase = in_vertebra / self.vert_pitch
        vb = (SX / rx) ** 2 + (SY / ry) ** 2
        vertebral_body = body & (vb <= 1.0)
        organ[vertebral_body] = ORGAN["bone"]
        if in_vertebra < self.disc_h:
            hu[vertebral_body] = v["disc"]
        else:
            rim = vb > (1.0 - 2.0 / min(rx, ry)) ** 2
            hu[vertebral_body] = np.where(rim, v["cortical_bone"], v["cancellous_bone"])[vertebral_body]
        canal_y = ry + rc + 1.5 * s
        parts = []
        for side in (-1.0, 1.0):
            pedicle_top = (side * (rc + 1.0 * s), ry * 0.6)
            pedicle_end = (side * (rc + 2.5 * s), canal_y)
            parts.append(self._bar(SX, SY, pedicle_top, pedicle_end, 3.0 * s))
            parts.append(self._bar(SX, SY, pedicle_end, (0.0, canal_y + rc + 4.0 * s), 2.5 * s))
            if 0.35 < phase < 0.7:
                parts.append(self._bar(SX, SY, (side * (rc + 2.0 * s), canal_y - 2.0 * s),
                                       (side * (rc + 24.0 * s), canal_y + 6.0 * s), 3.0 * s))
        if 0.25 < phase < 0.85:
            parts.append(self._bar(SX, SY, (0.0, canal_y + rc + 4.0 * s), (0.0, canal_y + rc + 28.0 * s), 2.5 * s))
        arch = np.logical_or.reduce(parts) & body & ~vertebral_body
        canal = body & ((SX ** 2 + (SY - canal_y) ** 2) <= rc * rc)
        arch &= ~canal
        organ[arch] = ORGAN["bone"]
        hu[arch] = 0.4 * v["cortical_bone"] + 0.6 * v["cancellous_bone"]
        organ[canal] = ORGAN["spinal_canal"]
        hu[canal] = v["csf"]

    def _muscles_in_slice(self, k, z, window, SX, SY, body, deep) -> None:
        """Erector spinae beside the spinous processes, quadratus lumborum and psoas lower down."""
        s, v = self.s, self.values
        organ = self.organ[k][window]
        hu = self.hu[k][window]
        free = body & deep & (organ != ORGAN["bone"]) & (organ != ORGAN["spinal_canal"])
        canal_y = self.vert_ry + self.canal_r + 1.5 * s
        muscle = ((np.abs(SX) - self.canal_r - 26.0 * s) ** 2 / (30.0 * s) ** 2
                  + (SY - canal_y - 18.0 * s) ** 2 / (32.0 * s) ** 2 <= 1.0)
        muscle |= (np.abs(SX) < self.canal_r + 24.0 * s) & (SY > canal_y) & (SY < canal_y + 38.0 * s)
        lumbar = self.zd - 95.0 * self.sz
        if z < lumbar:
            grow = min((lumbar - z) / 40.0, 1.0)
            muscle |= ((np.abs(SX) - self.canal_r - 58.0 * s) ** 2 / (18.0 * s * grow + 1e-3) ** 2
                       + (SY - 4.0 * s) ** 2 / (12.0 * s * grow + 1e-3) ** 2 <= 1.0)
        start = self.zd - 110.0 * self.sz
        if z < start:
            r = min(8.0 + (start - z) * 0.18, 26.0) * s
            cx = self.vert_rx + r * 0.8
            muscle |= (np.abs(SX) - cx) ** 2 + (SY + 2.0 * s) ** 2 / 0.8 <= r * r
        if self.zd - 140.0 * self.sz < z < self.zd - 15.0 * self.sz:
            # the diaphragm's crura wrap the front of the vertebral body and the aorta
            reach = np.sqrt((SX / self.vert_rx) ** 2 + (SY / self.vert_ry) ** 2)
            crus = (reach > 1.0) & (reach < 1.0 + 7.0 * s / self.vert_ry) & (SY < 0.4 * self.vert_ry)
            muscle |= crus
        muscle &= free
        organ[muscle] = ORGAN["muscle"]
        hu[muscle] = v["muscle"]

    def _great_vessels_in_slice(self, k, z, body) -> None:
        s, v = self.s, self.values
        toward_chest = 1.0 / (1.0 + math.exp(-(z - (self.zd - 30.0 * self.sz)) / 15.0))
        xa = self.spine_x + (1 - toward_chest) * self.aorta_dx + toward_chest * self.vert_rx * 0.8
        ya = self.spine_y - (1 - toward_chest) * (self.vert_ry + self.aorta_r + 3.0 * s) - toward_chest * \
            self.vert_ry * 0.6
        bifurcation = self.zd - 235.0 * self.sz
        X = self.x[None, :]
        Y = self.y[:, None]
        allowed = body & ~np.isin(self.organ[k], (ORGAN["bone"], ORGAN["spinal_canal"], ORGAN["subcutaneous_fat"]))
        if z > self.chest["arch_z"] - 30.0 * self.sz:  # the arch (drawn with the chest) turns forward
            aorta = np.zeros(allowed.shape, dtype=bool)
        elif z > bifurcation:
            aorta = allowed & ((X - xa) ** 2 + (Y - ya) ** 2 <= self.aorta_r ** 2)
        else:
            spread = 10.0 * s + min((bifurcation - z) * 0.35, 45.0 * s)
            r = self.aorta_r * 0.65
            aorta = allowed & (((X - xa - spread) ** 2 + (Y - ya) ** 2 <= r * r)
                               | ((X - xa + spread) ** 2 + (Y - ya) ** 2 <= r * r))
        self.organ[k][aorta] = ORGAN["aorta"]
        self.hu[k][aorta] = v["aorta"]
        if z < self.zd + 10.0 * self.sz and z > bifurcation:
            up = 1.0 / (1.0 + math.exp(-(z - (self.zd - 40.0 * self.sz)) / 12.0))
            xi = self.spine_x - self.ivc_dx - up * 6.0 * s
            yi = self.spine_y - self.vert_ry - self.ivc_r[1] - 8.0 * s - up * 14.0 * s
            ivc = allowed & (((X - xi) / self.ivc_r[0]) ** 2 + ((Y - yi) / self.ivc_r[1]) ** 2 <= 1.0)
            ivc &= self.organ[k] != ORGAN["aorta"]
            self.organ[k][ivc] = ORGAN["ivc"]
            self.hu[k][ivc] = v["ivc"]

    def _pelvis_in_slice(self, k, z, SX, SY, body) -> None:
        """Iliac wings flaring below the crest, then the femoral heads."""
        crest = self.zd - 255.0 * self.sz
        if z > crest:
            return
        s, v = self.s, self.values
        depth_below = crest - z
        if depth_below < 130.0 * self.sz:
            half_width = self.A * min(0.55 + depth_below / 400.0, 0.72)
            thickness = (6.0 + 6.0 * min(depth_below / 60.0, 1.0)) * s
            arc = np.sqrt((SX / half_width) ** 2 + ((SY + 0.35 * self.B) / (0.55 * self.B + 20.0 * s)) ** 2)
            off_centre = np.abs(arc - 1.0) * half_width
            bone = body & (off_centre < thickness) & (SY > -0.45 * self.B) & (np.abs(SX) > 35.0 * s)
            cortex = off_centre > thickness - 2.5 * s
        else:
            head_z = crest - 160.0 * self.sz
            r = 24.0 * s
            dz = z - head_z
            if abs(dz) >= r:
                return
            section = math.sqrt(r * r - dz * dz)
            reach = np.sqrt((np.abs(SX) - 0.55 * self.A) ** 2 + (SY + 0.1 * self.B) ** 2)
            bone = body & (reach <= section)
            cortex = reach > section - 2.5 * s
        bone &= self.organ[k] != ORGAN["spinal_canal"]
        self.organ[k][bone] = ORGAN["bone"]
        self.hu[k][bone] = np.where(cortex, v["cortical_bone"], v["cancellous_bone"])[bone]

    def _arms(self) -> None:
        s, v = self.s, self.values
        r = self._u(32, 45) * s
        for side in (-1, 1):
            cx = self.cx + side * (self.A * 1.05 + self._u(8, 30) * s + r)
            cy = self.cy + self._u(-0.25, 0.2) * self.B
            if abs(cx - self.x.mean()) + r > self.fov[0] / 2:
                continue
            X = self.x[None, :] - np.float32(cx)
            Y = self.y[:, None] - np.float32(cy)
            d = np.sqrt(X * X + Y * Y)
            arm = d <= r
            muscle = d <= r - 6.0 * s
            bone = np.sqrt((X - 0.2 * r) ** 2 + Y ** 2) <= 11.0 * s
            marrow = np.sqrt((X - 0.2 * r) ** 2 + Y ** 2) <= 7.0 * s
            for layer, organ, value in ((arm, "subcutaneous_fat", v["fat"]), (muscle, "muscle", v["muscle"]),
                                        (bone, "bone", v["cortical_bone"]), (marrow, "bone", v["fat"] + 60.0)):
                self.organ[:, layer] = ORGAN[organ]
                self.hu[:, layer] = value

    def _table(self) -> None:
        y_top = self.cy + self.B * 1.03 + self._u(5, 30) * self.s
        X = self.x[None, :] - np.float32(self.cx)
        Y = self.y[:, None]
        curve = y_top + 0.0012 / self.s * X * X
        width = np.abs(X) < self.A * 1.2
        half = max(1.2, 0.6 * float(self.spacing_xyz[1]))
        first = width & (np.abs(Y - curve) < half) & (self.organ[0] == ORGAN["air"])
        second = width & (np.abs(Y - curve - self._u(20, 40) * self.s) < half) & (self.organ[0] == ORGAN["air"])
        table = first | second
        if table.any():
            self.organ[:, table] = ORGAN["table"]
            self.hu[:, table] = self.values["table"]

    # ----- chest ------------------------------------------------------------------------------
    # Heart parts in the heart's own frame (u: base -> apex, v: towards the left ventricle's side,
    # i.e. left-posterior, w: up), nominal mm: (centre u, v, w), (semi-axes u, v, w), apex taper.
    _HEART_MASSES = (((12.0, 0.0, -4.0), (56.0, 40.0, 36.0), 0.4),    # ventricles
                     ((-34.0, 8.0, -2.0), (28.0, 46.0, 36.0), 0.0))   # atria
    _HEART_CHAMBERS = (("left", (14.0, 12.0, -4.0), (42.0, 16.0, 22.0), 0.4),    # LV
                       ("right", (6.0, -24.0, -2.0), (46.0, 12.0, 25.0), 0.35),  # RV
                       ("left", (-30.0, 30.0, 0.0), (20.0, 18.0, 22.0), 0.0),    # LA
                       ("right", (-38.0, -20.0, -4.0), (22.0, 18.0, 26.0), 0.0))  # RA
    _LV_OUTER = ((14.0, 12.0, -4.0), (51.0, 25.0, 31.0), 0.4)  # the LV's wall, which the RV wraps

    def _chest(self) -> None:
        """Heart, great vessels, airways, oesophagus and pulmonary vessels above the diaphragm."""
        rise, turn = self._u(35, 55), self._u(20, 40)  # the main stream's two draws for the heart
        self._airways_and_esophagus()
        self._heart(rise, turn)
        self._great_vessels_of_chest()
        self._pulmonary_vessels()

    def _diaphragm_at(self, x: float, y: float) -> float:
        i = int(np.clip(np.rint((x - self.x[0]) / self.spacing_xyz[0]), 0, self.x.size - 1))
        j = int(np.clip(np.rint((y - self.y[0]) / self.spacing_xyz[1]), 0, self.y.size - 1))
        return float(self.diaphragm[j, i])

    def _heart(self, rise: float, turn: float) -> None:
        """Four chambers in myocardium with epicardial fat, its long axis pointing left, forward
        and down; it fills the space between sternum and spine and rests on the diaphragm (its
        lower part is cut flat there) above the liver's left lobe."""
        c, s, v = self.chest, self.s, self.values
        tilt, azimuth = math.radians(c["heart_tilt"]), math.radians(turn + 35.0)
        e_u = np.array([math.sin(azimuth) * math.cos(tilt), -math.cos(azimuth) * math.cos(tilt), -math.sin(tilt)])
        e_v = np.array([math.cos(azimuth), math.sin(azimuth), 0.0])
        frame = np.stack([e_u, e_v, np.cross(e_u, e_v)], axis=1)  # columns: local axes in (x, y, z)
        # extent of the unit-scale heart around its centre, from points on its masses' surfaces
        n = 400
        golden = math.pi * (3.0 - math.sqrt(5.0))
        height = 1.0 - 2.0 * (np.arange(n) + 0.5) / n
        ring = np.sqrt(1.0 - height * height)
        sphere = np.stack([ring * np.cos(golden * np.arange(n)), ring * np.sin(golden * np.arange(n)), height], 1)
        local = np.concatenate([np.asarray(cen) + sphere * np.asarray(ax) for cen, ax, _ in self._HEART_MASSES])
        world = local @ frame.T
        low, high = world.min(axis=0), world.max(axis=0)
        front = self.cy - self.B + self.fat_sc * (1.0 + self.fat_anisotropy[0] + 0.5 * self.fat_anisotropy[1]) \
            + self.muscle_wall + self.rib_thick * 0.8 + c["sternum_thick"] * 0.3
        back = self.spine_y - self.vert_ry - c["esophagus_r"] - 2.0 * s
        gap = 3.0 * s
        # mm per nominal mm along x, y, z: a shallow chest gets a flatter, wider heart
        scale = c["heart_size"] * s
        depth = max(min(scale, 1.25 * (back - front - gap) / (high[1] - low[1])), 0.7 * s)
        size = np.array([min(1.12 * scale, 1.7 * depth), depth, min(scale, 1.5 * depth)])
        low, high = low * size, high * size
        centre_x = self.cx + c["heart_dx"]
        centre_y = front + gap - low[1]
        # its lowest point lies a little below the domes' tops; its lower half is stretched down
        # onto the diaphragm (which falls away in front) and sinks 5-15 mm into it: that part is
        # cut off, leaving a flat diaphragmatic surface on the central tendon and the left lobe
        bottom = self.zd - 0.5 * self.left_dome_drop - 5.0 * self.sz
        sink = (5.0 + 10.0 * (rise - 35.0) / 20.0) * self.sz
        centre_z = bottom - low[2]
        centre = np.array([centre_x, centre_y, centre_z])
        self.heart = dict(centre=centre, frame=frame, size=size,
                          points={name: centre + size * (frame @ np.asarray(p)) for name, p in (
                              ("aortic_root", (-18.0, -2.0, 22.0)), ("right_atrium", (-38.0, -20.0, -4.0)),
                              ("left_atrium", (-30.0, 30.0, 0.0)))})
        reach = np.maximum(np.abs(low), np.abs(high)) + c["epicardial_fat"] + c["fat_pad"] + 4.0 * s
        reach_down = reach.copy()
        reach_down[2] = reach[2] / 0.55
        box = self._box(centre - reach_down, centre + reach)
        if box is None:
            return
        slices, z, y, x = box
        floor = self.diaphragm[slices[1], slices[2]][None]
        stretch = np.clip((centre_z - bottom) / np.maximum(centre_z - floor + sink, 1e-3), 0.55, 1.0)
        dz = z - np.float32(centre[2])
        d = (x - np.float32(centre[0]), y - np.float32(centre[1]), np.where(dz < 0, dz * stretch, dz))
        u_, v_, w_ = (sum(np.float32(frame[axis, a] / size[axis]) * d[axis] for axis in range(3)) for a in range(3))

        def rho2(part) -> np.ndarray:
            (cu, cv, cw), (au, av, aw), taper = part
            du = (u_ - np.float32(cu)) / np.float32(au)
            shrink = np.float32(1.0) - np.float32(taper) * np.clip(du, 0.0, 1.0) if taper else np.float32(1.0)
            return du * du + (((v_ - np.float32(cv)) / np.float32(av)) ** 2
                              + ((w_ - np.float32(cw)) / np.float32(aw)) ** 2) / (shrink * shrink)

        softness = np.float32(0.15)
        envelope = softness * np.logaddexp((1.0 - rho2(self._HEART_MASSES[0])) / softness,
                                           (1.0 - rho2(self._HEART_MASSES[1])) / softness)
        thorax = self._allowed(slices, "lung", "mediastinal_fat")
        thorax &= z > floor + self.diaphragm_thickness[slices[1], slices[2]][None]
        # epicardial fat: a thin layer, thicker in the grooves and in a pad at the apex on the diaphragm
        pad = np.clip(-w_ / np.float32(25.0), 0.0, 1.0) * np.clip((u_ + 10.0) / np.float32(40.0), 0.0, 1.0)
        groove = np.float32(3.0 * s) * (np.abs(u_ + 14.0) < 6.0)
        texture = _SmoothField(self.chest_rng, envelope.shape, self.spacing_kji, 25.0).full()
        fat_mm = np.float32(c["epicardial_fat"]) + np.float32(c["fat_pad"]) * pad + groove \
            + np.float32(1.5 * s) * texture
        fat = thorax & (envelope > -np.maximum(fat_mm, 0.0) / np.float32(20.0 * size.mean())) & (envelope <= 0)
        self._paint(slices, fat, "pericardial_fat", v["fat"])
        heart = thorax & (envelope > 0)
        value = np.full(heart.shape, v["myocardium"], dtype=np.float32)
        lv_wall = rho2(self._LV_OUTER) <= 1.0
        blood = {"left": np.float32(v["aorta"]), "right": np.float32(v["blood"])}
        for index, (side, centre_uvw, axes, taper) in enumerate(self._HEART_CHAMBERS):
            chamber = rho2((centre_uvw, axes, taper)) <= 1.0
            if index == 1:
                chamber &= ~lv_wall
            value[chamber] = blood[side]
        self._paint(slices, heart, "heart", value)

    def _vessel(self, points, radii, organ: str, value: float, allowed: Sequence[str], sleeve: float = 0.0) -> None:
        """A tube in a sleeve of mediastinal fat where it runs through lung."""
        if sleeve > 0:
            self._tube(points, [r + sleeve for r in radii], "mediastinal_fat", self.values["fat"], ("lung",))
        self._tube(points, radii, organ, value, allowed)

    def _great_vessels_of_chest(self) -> None:
        """Ascending aorta, arch and its branches (the descending aorta is drawn slice by slice),
        pulmonary trunk and arteries to the hila, SVC and IVC into the right atrium, pulmonary
        veins into the left atrium."""
        c, s, sz, v = self.chest, self.s, self.sz, self.values
        points = self.heart["points"]
        top = float(self.z[-1]) + 20.0
        inside = ("lung", "mediastinal_fat", "pericardial_fat", "heart")
        sleeve = c["sleeve"]
        root = points["aortic_root"]
        descending = np.array([self.spine_x + self.vert_rx * 0.8, self.spine_y - self.vert_ry * 0.6])
        ascending_top = np.array([self.cx + c["ascending_dx"], root[1] - 4.0 * s, c["arch_z"] - 28.0 * sz])
        apex = np.array([self.spine_x + c["trachea_r"] + 18.0 * s, 0.5 * (ascending_top[1] + descending[1]),
                         c["arch_z"]])
        arch_r = 0.5 * (c["ascending_r"] + self.aorta_r)
        self._vessel([root, ascending_top, apex, (descending[0], descending[1], c["arch_z"] - 34.0 * sz)],
                     [c["ascending_r"] * 0.9, c["ascending_r"], arch_r, self.aorta_r], "aorta", v["aorta"],
                     inside, sleeve)
        for start, end, radius in (
                (0.5 * (ascending_top + apex), (self.cx - 20.0 * s, ascending_top[1] + 8.0 * s, top), 6.5 * s),
                (apex, (self.spine_x + 10.0 * s, apex[1] - 6.0 * s, top), 4.5 * s),
                (0.5 * (apex + np.array([descending[0], descending[1], apex[2]])),
                 (self.spine_x + 30.0 * s, descending[1] - 6.0 * s, top), 5.5 * s)):
            self._vessel([start, end], [radius, radius * 0.9], "aorta", v["aorta"], inside, sleeve)
        # pulmonary trunk from the right ventricle's outflow, up and back to its bifurcation
        trunk_r = c["trunk_r"]
        outflow = root + np.array([16.0 * s, -14.0 * s, 6.0 * sz])
        bifurcation = np.array([root[0] + 24.0 * s, root[1] + 16.0 * s, c["pa_bifurcation_z"]])
        hilum_y = self.spine_y - self.vert_ry - 24.0 * s
        self.hila = {1: np.array([self.spine_x + 54.0 * s, hilum_y + 2.0 * s, c["pa_bifurcation_z"] - 6.0 * sz]),
                     -1: np.array([self.spine_x - 52.0 * s, hilum_y, c["pa_bifurcation_z"] - 16.0 * sz])}
        behind_aorta = np.array([ascending_top[0] + 2.0 * s, root[1] + c["ascending_r"] + 0.8 * trunk_r + 3.0 * s,
                                 c["pa_bifurcation_z"] - 10.0 * sz])
        artery = v["blood"]
        self._vessel([outflow, bifurcation], [trunk_r, trunk_r], "pulmonary_vessel", artery, inside, sleeve)
        self._vessel([bifurcation, self.hila[1]], [0.8 * trunk_r, 0.7 * trunk_r], "pulmonary_vessel", artery,
                     inside, sleeve)
        self._vessel([bifurcation, behind_aorta, self.hila[-1]], [0.8 * trunk_r, 0.75 * trunk_r, 0.7 * trunk_r],
                     "pulmonary_vessel", artery, inside, sleeve)
        # veins: SVC down into the right atrium, IVC up into it, pulmonary veins into the left atrium
        atrium = points["right_atrium"]
        svc = np.array([ascending_top[0] - c["ascending_r"] - c["svc_r"] - 3.0 * s, root[1] + 6.0 * s])
        self._vessel([(svc[0], svc[1], top), (svc[0], svc[1], atrium[2] + 25.0 * sz), atrium],
                     [c["svc_r"], c["svc_r"], c["svc_r"]], "ivc", v["ivc"] if self.phase != "arterial" else v["blood"],
                     inside, sleeve)
        self._tube([(self.ivc_top[0], self.ivc_top[1], self.zd + 5.0 * sz), atrium], [self.ivc_r[0], self.ivc_r[0]],
                   "ivc", v["ivc"], inside)
        left_atrium = points["left_atrium"]
        self.pulmonary_vein_ends = []
        for side in (-1, 1):
            for dz in (14.0, -16.0):
                end = np.array([left_atrium[0] + side * 44.0 * s, left_atrium[1] + 6.0 * s, left_atrium[2] + dz * sz])
                self.pulmonary_vein_ends.append((side, end))
                self._vessel([left_atrium, end], [7.0 * s, 6.0 * s], "pulmonary_vessel", v["aorta"], inside, sleeve)

    def _airways_and_esophagus(self) -> None:
        """Trachea to the carina, main and lobar bronchi (air in a thin wall); the oesophagus
        between trachea and spine down through the diaphragm."""
        c, s, sz, v = self.chest, self.s, self.sz, self.values
        top = float(self.z[-1]) + 20.0
        radius = c["esophagus_r"]
        eso = np.array([self.spine_x - 2.0 * s, self.spine_y - self.vert_ry - radius - 2.0 * s])
        path = [(eso[0], eso[1], top), (eso[0] + 4.0 * s, eso[1], self.zd + 40.0 * sz),
                (self.spine_x + 24.0 * s, self.spine_y - self.vert_ry - 2.0 * self.aorta_r - 14.0 * s,
                 self.zd - 15.0 * sz)]
        around = ("lung", "mediastinal_fat", "muscle")
        self._vessel(path, [radius] * 3, "esophagus", v["muscle"], around, c["sleeve"])
        if c["esophagus_air"]:
            self._tube(path[:2], [0.35 * radius] * 2, "esophagus", v["gas"], ("esophagus",))
        trachea_r = c["trachea_r"]
        trachea = np.array([self.spine_x, eso[1] - radius - trachea_r - 2.0 * s])
        carina = np.array([trachea[0], trachea[1], c["carina_z"]])
        airways = [([(trachea[0], trachea[1], top), carina], trachea_r),
                   ([carina, carina + np.array([-38.0 * s, 8.0 * s, -20.0 * sz])], 0.68 * trachea_r),
                   ([carina, carina + np.array([46.0 * s, 12.0 * s, -38.0 * sz])], 0.6 * trachea_r)]
        self.bronchus_ends = {-1: np.asarray(airways[1][0][1]), 1: np.asarray(airways[2][0][1])}
        wall = 1.5 * s
        for index, (points, r) in enumerate(airways):
            self._vessel(points, [r + wall] * len(points), "airway", c["airway_wall_hu"], around,
                         c["sleeve"] if index == 0 else 0.0)
            self._tube(points, [r] * len(points), "airway", v["gas"], ("airway",) + around)

    def _lung_points(self) -> Dict[int, np.ndarray]:
        """Random points (x, y, z mm) of each lung (-1 right, 1 left), about 6 mm apart or sparser."""
        steps = [max(1, int(round(6.0 / sp))) for sp in self.spacing_kji]
        lung = self.organ[::steps[0], ::steps[1], ::steps[2]] == ORGAN["lung"]
        index = np.argwhere(lung) * np.asarray(steps)
        if len(index) == 0:
            return {}
        points = np.stack([self.x[index[:, 2]], self.y[index[:, 1]], self.z[index[:, 0]]], axis=1).astype(np.float64)
        found = {}
        for side in (-1, 1):
            mine = points[(points[:, 0] - self.spine_x) * side > 0]
            if len(mine) >= 20:
                pick = self.chest_rng.choice(len(mine), size=min(len(mine), 800), replace=False)
                found[side] = mine[pick]
        return found

    def _pulmonary_vessels(self) -> None:
        """Branching arteries from the hila and veins towards the left atrium, tapering into the
        periphery of each lung, and lobar bronchi beside them."""
        c, s, v = self.chest, self.s, self.values
        rng = self.chest_rng
        lungs = self._lung_points()
        wall = 1.2 * s
        for side, points in lungs.items():
            bronchi: List[tuple] = []
            self._branch(self.bronchus_ends[side], points, 0.42 * c["trachea_r"], 0, 2, bronchi, "airway", rng)
            for p0, p1, r0, r1, _ in bronchi:
                self._tube([p0, p1], [r0 + wall, r1 + wall], "airway", c["airway_wall_hu"], ("lung",))
                self._tube([p0, p1], [r0, r1], "airway", v["gas"], ("lung", "airway"))
        segments: List[tuple] = []
        for side, points in lungs.items():
            self._branch(self.hila[side], points, 0.55 * c["trunk_r"] * c["artery_scale"], 0, 6, segments,
                         "artery", rng)
            ends = [end for end_side, end in self.pulmonary_vein_ends if end_side == side]
            upper = points[:, 2] > 0.5 * (ends[0][2] + ends[1][2])
            for end, group in zip(ends, (points[upper], points[~upper])):
                self._branch(end, group, 5.5 * s * c["vein_scale"], 0, 5, segments, "vein", rng)
        for p0, p1, r0, r1, kind in segments:
            allowed = ("lung", "mediastinal_fat") if r0 > 4.0 * s else ("lung",)
            value = v["blood"] if kind == "artery" else v["aorta"]
            self._tube([p0, p1], [r0, r1], "pulmonary_vessel", value, allowed)

    def _kidneys(self) -> None:
        """Kidneys in their perirenal fat, hilum (sinus fat, pelvis) facing antero-medially."""
        s, sz, v = self.s, self.sz, self.values
        right_z = self.zd - self._u(105, 135) * sz
        for side in (-1, 1):  # -1 = patient right (-x in LPS)
            center = np.array([self.spine_x + side * self._u(55, 70) * s, self.spine_y + self._u(-8, 8) * s,
                               right_z + (self._u(5, 25) * sz if side > 0 else 0.0)])
            axes = np.array([self._u(21, 27) * s, self._u(27, 34) * s, self._u(45, 58) * sz])
            rotation = _rotation(z_deg=side * self._u(25, 40), y_deg=side * self._u(5, 15))
            # for many seeds the right kidney's fat is thin: the liver lies on it (hepatorenal contact)
            fat = 0.2 if side < 0 and self.neighbour_rng.random() < 0.6 else 1.0
            fat_center = center + np.array([0.0, 0.15 * axes[1] * fat, 0.0])
            fat_axes = axes * (1.0 + 0.05 * fat) + np.array([1.0, 1.0, 0.5]) * self._u(3, 8) * s * fat
            found = self._ellipsoid(fat_center, fat_axes, rotation)
            if found is not None:
                slices, rho2, _ = found
                self._paint(slices, (rho2 <= 1.0) & self._allowed(slices, "visceral_fat"), "retroperitoneal_fat",
                            v["fat"])
            found = self._ellipsoid(center, axes, rotation)
            if found is None:
                continue
            slices, rho2, (z, y, x) = found
            d = (x - np.float32(center[0]), y - np.float32(center[1]), z - np.float32(center[2]))
            local = [sum(np.float32(rotation[w, a]) * d[w] for w in range(3)) / np.float32(axes[a]) for a in range(3)]
            toward_hilum = -side * local[0]  # > 0 toward the spine
            kidney = (rho2 <= 1.0) & self._allowed(slices, "retroperitoneal_fat", "visceral_fat")
            cortex = rho2 > 0.72 ** 2
            value = np.where(cortex, np.float32(v["kidney_cortex"]), np.float32(v["kidney_medulla"]))
            self._paint(slices, kidney, "kidney", value)
            sinus = kidney & (((toward_hilum > -0.1) & (rho2 < 0.5 ** 2))
                              | ((toward_hilum > 0.2) & (local[1] ** 2 + (local[2] / 1.6) ** 2 < 0.35 ** 2)))
            self._paint(slices, sinus, "retroperitoneal_fat", v["fat"] + 20.0)
            pelvis = kidney & (rho2 < 0.28 ** 2) & (toward_hilum > 0.0)
            self._paint(slices, pelvis, "kidney", v["urine"] if self.phase != "delayed" else v["kidney_medulla"] + 150)

    def _spleen(self) -> None:
        s, sz = self.s, self.sz
        center = np.array([self.cx + self._u(0.5, 0.62) * self.A, self.cy + self._u(0.1, 0.3) * self.B,
                           self.zd - self._u(45, 65) * sz])
        axes = (self._u(24, 36) * s, self._u(45, 65) * s, self._u(42, 58) * sz)
        rotation = _rotation(z_deg=-self._u(25, 45), y_deg=self._u(-15, 5))
        found = self._ellipsoid(center, axes, rotation)
        if found is None:
            return
        slices, rho2, (z, y, x) = found
        hollow_center = center + rotation @ np.array([-1.1 * axes[0], 0.0, 0.0])
        hollow = self._rho2(z, y, x, hollow_center, (axes[0] * 0.9, axes[1] * 0.8, axes[2] * 0.9), rotation)
        spleen = (rho2 <= 1.0) & (hollow > 1.0) & self._allowed(slices, "visceral_fat")
        self._paint(slices, spleen, "spleen", self.values["spleen"])

    def _liver(self) -> None:
        """Right lobe, left lobe and caudate merged smoothly, lobulated by a smooth random field,
        clipped by the diaphragm and the walls, and pushed aside by kidney, spine, vessels, spleen."""
        s, sz, A, B = self.s, self.sz, self.A, self.B
        u = self._u
        size = u(0.9, 1.25)
        right = dict(center=(self.cx - u(0.3, 0.45) * A, self.cy + u(-0.12, 0.05) * B, self.zd - u(35, 55) * sz),
                     axes=(u(0.5, 0.62) * A * size, u(0.75, 0.9) * B * size, u(75, 100) * sz * size),
                     rotation=_rotation(z_deg=u(-15, 15), y_deg=u(5, 30), x_deg=u(-15, 15)))
        left = dict(center=(self.cx + u(-0.02, 0.22) * A, self.cy - u(0.35, 0.5) * B, self.zd - u(30, 50) * sz),
                    axes=(u(0.3, 0.5) * A * size, u(0.22, 0.35) * B * size, u(28, 42) * sz * size),
                    rotation=_rotation(z_deg=u(-20, 10), y_deg=u(-25, 5)))
        caudate = dict(center=(self.spine_x - u(10, 25) * s, self.spine_y - self.vert_ry - u(35, 50) * s,
                               self.zd - u(50, 70) * sz),
                       axes=(u(18, 26) * s, u(18, 26) * s, u(28, 40) * sz), rotation=np.eye(3))
        lobes = [right, left, caudate]
        self.liver_lobes = lobes
        lo = np.full(3, np.inf)
        hi = np.full(3, -np.inf)
        for lobe in lobes:
            reach = np.abs(lobe["rotation"]) @ np.asarray(lobe["axes"]) * 1.3
            lo = np.minimum(lo, np.asarray(lobe["center"]) - reach)
            hi = np.maximum(hi, np.asarray(lobe["center"]) + reach)
        box = self._box(lo, hi)
        if box is None:
            self._stomach(None)
            return
        slices, z, y, x = box
        softness = 0.12
        total = None
        for lobe in lobes:
            term = np.exp((1.0 - self._rho2(z, y, x, lobe["center"], lobe["axes"], lobe["rotation"])) / softness)
            total = term if total is None else total + term
        field_ = softness * np.log(np.maximum(total, np.float32(1e-30)))
        # the inferior border rises from the right lobe's tip towards the left lobe
        tip = np.asarray(right["center"]) - np.array([0.3 * A, 0.0, 0.8 * right["axes"][2]])
        rise_x, rise_y, bend = u(0.2, 0.55), u(-0.3, 0.15), u(0.3, 0.9) / B
        dy = y - np.float32(tip[1])
        floor = (z - np.float32(tip[2])) - np.float32(rise_x) * (x - np.float32(tip[0])) \
            - np.float32(rise_y) * dy - np.float32(bend) * dy * dy  # curved, not a plane
        field_ = np.minimum(field_, floor / np.float32(40.0 * sz))
        shape = field_.shape
        bumps = _SmoothField(self.rng, shape, self.spacing_kji, u(30, 50)).full()
        field_ += np.float32(u(0.12, 0.25)) * bumps
        # the stomach, duodenum and colon come first: the liver then wraps around them (the
        # gastric, duodenal and colic impressions), touching them with nothing between
        steps = [max(1, int(round(4.0 / sp))) for sp in self.spacing_kji]
        coarse = (field_[::steps[0], ::steps[1], ::steps[2]] > 0) & (
            self.organ[slices][::steps[0], ::steps[1], ::steps[2]] == ORGAN["visceral_fat"])
        index = np.argwhere(coarse) * np.asarray(steps)
        cloud = np.stack([self.x[slices[2]][index[:, 2]], self.y[slices[1]][index[:, 1]],
                          self.z[slices[0]][index[:, 0]]], axis=1).astype(np.float64) if len(index) >= 20 else None
        self._stomach(cloud)
        liver = (field_ > 0) & self._allowed(slices, "visceral_fat")
        # keep the largest piece only
        labels, count = ndimage.label(liver)
        if count > 1:
            sizes = ndimage.sum_labels(liver, labels, index=np.arange(1, count + 1))
            liver = labels == (1 + int(np.argmax(sizes)))
        self._paint(slices, liver, "liver", self.values["liver"])
        self.liver_box = slices
        organ = self.organ[slices]
        organ[organ == _RESERVED] = ORGAN["visceral_fat"]  # the fat kept between stomach and liver

    def _gallbladder(self) -> None:
        """In its fossa: sunk into the liver's inferior surface between the right lobe and the
        left (the liver gives way to it), its fundus below the liver's edge."""
        s, sz = self.s, self.sz
        center = np.array([self.cx - self._u(0.08, 0.25) * self.A, self.cy - self._u(0.15, 0.35) * self.B,
                           self.zd - self._u(85, 115) * sz])
        axes = (self._u(12, 18) * s, self._u(12, 18) * s, self._u(28, 42) * sz)
        rotation = _rotation(z_deg=self._u(-30, 30), x_deg=self._u(20, 45))
        sunk = self.neighbour_rng.uniform(0.1, 0.5)  # how much of its length lies above the liver's lower surface
        if hasattr(self, "liver_box"):
            box = self.liver_box
            steps = [max(1, int(round(3.0 / sp))) for sp in self.spacing_kji]
            index = np.argwhere(self.organ[box][::steps[0], ::steps[1], ::steps[2]] == ORGAN["liver"]) * np.asarray(steps)
            points = np.stack([self.x[box[2]][index[:, 2]], self.y[box[1]][index[:, 1]], self.z[box[0]][index[:, 0]]],
                              axis=1)
            near = points[np.hypot(points[:, 0] - center[0], points[:, 1] - center[1]) < 15.0 * s]
            if len(near):  # the liver's lowest point above where it was drawn: the fossa
                center = near[int(np.argmin(near[:, 2]))] + np.array([0.0, 0.0, sunk * axes[2]])
        found = self._ellipsoid(center, axes, rotation)
        if found is None:
            return
        slices, rho2, _ = found
        allowed = self._allowed(slices, "visceral_fat", "liver")
        wall = allowed & (rho2 <= 1.0)
        self._paint(slices, wall, "gallbladder", self.values["bowel_wall"])
        lumen = allowed & (rho2 <= (1.0 - 2.0 / min(axes)) ** 2)
        self._paint(slices, lumen, "gallbladder", self.values["bile"])

    def _pancreas_and_veins(self) -> None:
        s, sz, v = self.s, self.sz, self.values
        xs, ys, ry = self.spine_x, self.spine_y, self.vert_ry
        front = ys - ry - 2.0 * self.aorta_r
        tail = (self.cx + 0.42 * self.A, ys - ry * 0.5, self.zd - self._u(70, 85) * sz)
        body = (xs + 5.0 * s, front - self._u(15, 22) * s, self.zd - self._u(88, 98) * sz)
        head = (xs - self._u(30, 40) * s, front - self._u(5, 12) * s, self.zd - self._u(105, 115) * sz)
        uncinate = (xs - self._u(22, 32) * s, front + 5.0 * s, self.zd - self._u(120, 130) * sz)
        self._tube([tail, body, head, uncinate], [9 * s, 10 * s, 15 * s, 10 * s], "pancreas", v["pancreas"],
                   ("visceral_fat",))
        confluence = (xs - 10.0 * s, front - 8.0 * s, self.zd - 100.0 * sz)
        hilum = getattr(self, "portal_hilum", (self.spine_x - 40.0 * s, ys - ry - 50.0 * s, self.zd - 85.0 * sz))
        portal_r = self._u(6, 8) * s
        self._tube([confluence, hilum], [portal_r, portal_r], "portal_vein", v["portal"], ("visceral_fat", "pancreas"))
        self._tube([tail, confluence], [4.0 * s, 5.0 * s], "portal_vein", v["portal"], ("visceral_fat",))
        low = self.zd - 170.0 * sz
        self._tube([confluence, (xs - 12.0 * s, front - 20.0 * s, low)], [5.5 * s, 4.0 * s], "portal_vein",
                   v["portal"], ("visceral_fat", "pancreas"))
        sma_top = (xs + self.aorta_dx, front + 2.0 * s, self.zd - 95.0 * sz)
        self._tube([sma_top, (xs + 2.0 * s, front - 14.0 * s, self.zd - 110.0 * sz),
                    (xs + 4.0 * s, front - 22.0 * s, low)], [4.0 * s, 3.5 * s, 2.5 * s], "aorta", v["aorta"],
                   ("visceral_fat",))

    # ----- the liver's neighbours: stomach, duodenum, colon ----------------------------------------
    @staticmethod
    def _move_to_gap(points: np.ndarray, radii: Sequence[float], cloud: Optional[np.ndarray], gap_mm: float,
                     max_shift_mm: float) -> np.ndarray:
        """``points`` moved together so that the tube through them keeps ``gap_mm`` from ``cloud``
        (negative: it presses that deep into it, so the organ painted around the liver touches it)."""
        points = np.asarray(points, dtype=np.float64)
        if cloud is None:
            return points
        shift = np.zeros(3)
        for _ in range(4):
            gap, direction = _path_gap(points + shift, radii, cloud)
            if abs(gap - gap_mm) < 1.0:
                break
            shift = shift + (gap - gap_mm) * direction
            length = float(np.linalg.norm(shift))
            if length > max_shift_mm:
                shift *= max_shift_mm / length
        return points + shift

    def _hollow(self, points: np.ndarray, radii: Sequence[float], rng: np.random.Generator, wobble_mm: float,
                wobble_scale_mm: float, margin_mm: float = 0.0):
        """A hollow organ: the tube through ``points`` (x, y, z mm) with ``radii``, its surface made
        irregular by ``wobble_mm`` of a smooth field, in the visceral fat only (so it wraps around
        the organs drawn before it). Returns the index slices, its mask, the depth (mm) of each of
        its voxels below its surface, the (z, y, x) mm coordinates and the shell of visceral fat
        ``margin_mm`` thick around it, or None when none of it is in view."""
        points = np.asarray(points, dtype=np.float64)
        reach = max(radii) + 2.5 * wobble_mm + 2.0 + margin_mm
        box = self._box(points.min(axis=0) - reach, points.max(axis=0) + reach)
        if box is None:
            return None
        slices, z, y, x = box
        distance = None
        for p0, p1, r0, r1 in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
            p0, seg = p0.astype(np.float32), (p1 - p0).astype(np.float32)
            t = ((x - p0[0]) * seg[0] + (y - p0[1]) * seg[1] + (z - p0[2]) * seg[2]) / np.float32(
                max(float(seg @ seg), 1e-6))
            t = np.clip(t, np.float32(0.0), np.float32(1.0))
            d = np.sqrt((x - p0[0] - t * seg[0]) ** 2 + (y - p0[1] - t * seg[1]) ** 2 + (z - p0[2] - t * seg[2]) ** 2)
            d -= np.float32(r0) + np.float32(r1 - r0) * t
            distance = d if distance is None else np.minimum(distance, d)
        if wobble_mm > 0:
            distance += np.float32(wobble_mm) * _SmoothField(rng, distance.shape, self.spacing_kji,
                                                             wobble_scale_mm).full()
        fat = self._allowed(slices, "visceral_fat")
        mask = (distance <= 0) & fat
        if not mask.any():
            return None
        shell = fat & (distance > 0) & (distance <= np.float32(margin_mm)) if margin_mm > 0 else None
        # on the organ's own bounding box (and a voxel of what surrounds it), a fraction of the tube's
        kept = ndimage.find_objects((mask if shell is None else mask | shell).astype(np.uint8))[0]
        crop = tuple(slice(max(k.start - 1, 0), min(k.stop + 1, n)) for k, n in zip(kept, mask.shape))
        slices = tuple(slice(s.start + c.start, s.start + c.stop) for s, c in zip(slices, crop))
        mask = mask[crop]
        shell = None if shell is None else shell[crop]
        z, y, x = z[crop[0]], y[:, crop[1]], x[:, :, crop[2]]
        depth = ndimage.distance_transform_edt(mask, sampling=self.spacing_kji).astype(np.float32)
        return slices, mask, depth, (z, y, x), shell

    @staticmethod
    def _levels(lumen: np.ndarray, y: np.ndarray, fractions: Sequence[float]) -> List[np.ndarray]:
        """Layers of the lumen by gravity (the patient supine: what is denser lies posterior, +y):
        the front ``fractions[0]`` of its volume, the next ``fractions[1]``, ..., then the rest."""
        ys = np.broadcast_to(y, lumen.shape)[lumen]
        layers, done = [], np.zeros(lumen.shape, dtype=bool)
        cumulative = 0.0
        for fraction in fractions:
            cumulative += fraction
            if fraction <= 0:
                layers.append(np.zeros(lumen.shape, dtype=bool))
                continue
            level = np.float32(np.quantile(ys, min(cumulative, 1.0))) if cumulative < 1.0 else np.float32(np.inf)
            layer = lumen & (y <= level) & ~done
            layers.append(layer)
            done |= layer
        layers.append(lumen & ~done)
        return layers

    def _food(self, region: np.ndarray, rng: np.random.Generator, base_hu: float, bubbles: bool) -> np.ndarray:
        """HU of mottled food at soft-tissue density in the voxels of ``region``: a blotchy texture
        around ``base_hu`` (4-14 HU on a 3-6 mm scale over 3-10 HU on a 10-20 mm one: from nearly
        as even as liver to coarse), and for some seeds gas bubbles in it."""
        found = ndimage.find_objects(region.astype(np.uint8))
        if not found or found[0] is None:
            return np.zeros(0, dtype=np.float32)
        region = region[found[0]]
        shape = region.shape
        food = np.float32(base_hu) + np.float32(rng.uniform(4, 14)) * _SmoothField(
            rng, shape, self.spacing_kji, rng.uniform(3, 6)).full()
        food += np.float32(rng.uniform(3, 10)) * _SmoothField(rng, shape, self.spacing_kji, rng.uniform(10, 20)).full()
        if bubbles:
            bubble = _SmoothField(rng, shape, self.spacing_kji, rng.uniform(3, 6)).full() > np.float32(
                rng.uniform(2.0, 2.6))
            food[bubble] = np.float32(self.values["gas"])
        return food[region]

    def _stomach(self, cloud: Optional[np.ndarray]) -> None:
        """The stomach: fundus under the left dome, body down and forward behind and under the
        liver's left lobe, antrum across the midline to the pylorus; then the duodenum (bulb,
        descending part beside the pancreatic head and the liver, the start of its third part) and
        the hepatic flexure of the colon under the right lobe. For most seeds the stomach presses
        against the left lobe with no fat between (``_STOMACH_TOUCH_PROBABILITY``), as in most
        patients; the duodenum and colon touch the liver's inferior surface for some. The filling
        (STOMACH_FILLINGS) is drawn per seed; all are background in the labels. Drawn just before
        the liver is painted (``cloud``: points of the liver to be, or None), which then wraps
        around them; where the stomach is not to touch the liver, a shell of fat is kept free
        around it."""
        rng = self.neighbour_rng

        def u(lo: float, hi: float) -> float:
            return float(rng.uniform(lo, hi))

        s, sz, A, B, v = self.s, self.sz, self.A, self.B, self.values
        cx, cy, zd = self.cx, self.cy, self.zd
        filling = self.extras["stomach_filling"]
        # all scalar draws first: the same for a seed in every view
        touch = bool(rng.random() < _STOMACH_TOUCH_PROBABILITY)
        press_mm = u(5, 20)  # how deep the liver to be reaches into the tube
        fat_mm = 0.0 if touch else u(4, 15)  # fat kept between the stomach and the liver
        distension = u(0.45, 0.6) if filling == "collapsed" else u(0.85, 1.25)
        stomach = np.array([
            (cx + u(0.3, 0.42) * A, cy + u(-0.15, 0.05) * B, zd - self.left_dome_drop - u(20, 35) * sz),  # fundus
            (cx + u(0.2, 0.32) * A, cy - u(0.15, 0.3) * B, zd - u(60, 80) * sz),  # body
            (cx + u(-0.05, 0.1) * A, cy - u(0.35, 0.5) * B, zd - u(85, 105) * sz),  # antrum
            (cx - u(0.12, 0.2) * A, cy - u(0.28, 0.4) * B, zd - u(85, 100) * sz)])  # pylorus
        stomach_r = [u(28, 40) * s * distension, u(24, 36) * s * distension, u(16, 24) * s * distension, u(7, 10) * s]
        wall_mm = (u(5, 10) if filling == "collapsed" else u(2, 4)) * s
        boost = u(*_MUCOSA_BOOST_HU[self.phase])
        content_hu = dict(food=u(38, 62), mixed=u(38, 62), water=u(*_STOMACH_CONTENT_HU["water"]),
                          contrast=u(170, 320), air=v["gas"], collapsed=v["fluid"])[filling]
        settle_hu = u(0, 80)  # contrast: denser where it settles (posterior)
        gas_fraction = dict(food=u(0.0, 0.08) if rng.random() < 0.5 else 0.0, mixed=u(0.2, 0.55),
                            water=u(0.0, 0.25) if rng.random() < 0.6 else 0.0, air=u(0.7, 1.0),
                            contrast=u(0.05, 0.3) if rng.random() < 0.5 else 0.0,
                            collapsed=1.0 if rng.random() < 0.5 else 0.0)[filling]
        fluid_fraction = u(0.05, 0.25) if filling == "mixed" else 0.0  # between the gas and the food
        bubbles = bool(rng.random() < 0.6)
        duodenum = np.array([
            (cx - u(0.25, 0.32) * A, cy - u(0.15, 0.25) * B, stomach[3][2] + u(-5, 8) * sz),  # bulb
            (self.spine_x - u(45, 60) * s, self.spine_y - self.vert_ry - u(10, 25) * s, zd - u(105, 120) * sz),
            (self.spine_x - u(45, 60) * s, self.spine_y - self.vert_ry - u(5, 20) * s, zd - u(150, 170) * sz),
            (self.spine_x + u(0, 20) * s, self.spine_y - self.vert_ry - 2.0 * self.aorta_r - u(8, 16) * s,
             zd - u(165, 180) * sz)])
        oral_contrast = filling == "contrast" and rng.random() < 0.8
        duodenum_content = "contrast" if oral_contrast else str(rng.choice(
            ("fluid", "gas", "collapsed", "chyme"), p=(0.35, 0.15, 0.3, 0.2)))
        duodenum_r = u(9, 14) * s * (0.6 if duodenum_content == "collapsed" else 1.0)
        duodenum_touch = bool(rng.random() < 0.5)
        duodenum_press = u(2, 8)
        colon = np.array([(cx - u(0.5, 0.6) * A, cy + u(-0.05, 0.1) * B, zd - u(150, 175) * sz),
                          (cx - u(0.38, 0.48) * A, cy - u(0.15, 0.3) * B, zd - u(115, 135) * sz),
                          (cx - u(0.05, 0.15) * A, cy - u(0.5, 0.6) * B, zd - u(115, 135) * sz),
                          (cx + u(0.2, 0.35) * A, cy - u(0.45, 0.55) * B, zd - u(120, 140) * sz)])
        colon_content = str(rng.choice(("feces", "gas", "collapsed"), p=(0.45, 0.3, 0.25)))
        colon_r = u(14, 24) * s * (0.6 if colon_content == "collapsed" else 1.0)
        colon_drawn, colon_touch, colon_press = bool(rng.random() < 0.85), bool(rng.random() < 0.6), u(2, 8)
        self.oral_contrast = oral_contrast

        moved = self._move_to_gap(stomach, stomach_r, cloud, -press_mm, 60.0 * s)
        duodenum = duodenum + (moved[0] - stomach[0])
        stomach = moved
        if duodenum_touch:
            duodenum = self._move_to_gap(duodenum, [duodenum_r] * 4, cloud, -duodenum_press, 30.0 * s)
        if colon_touch:
            colon = self._move_to_gap(colon, [colon_r] * 4, cloud, -colon_press, 30.0 * s)

        found = self._hollow(stomach, stomach_r, rng, (1.0 if filling == "collapsed" else 4.0) * s, 30.0, fat_mm)
        volume_ml = 0.0
        if found is not None:
            slices, mask, depth, (_, y, _), shell = found
            if shell is not None:
                self.organ[slices][shell] = _RESERVED
            lumen = mask & (depth > max(wall_mm, min(self.spacing_kji)))
            value = np.full(mask.shape, v["bowel_wall"], dtype=np.float32)
            value[mask & ~lumen & (depth > 0.5 * wall_mm)] = v["bowel_wall"] + boost  # enhancing mucosa
            if lumen.any():
                gas, fluid, rest = self._levels(lumen, y, (gas_fraction, fluid_fraction))
                value[gas] = v["gas"]
                value[fluid] = v["fluid"]
                if filling in ("food", "mixed"):
                    value[rest] = self._food(rest, rng, content_hu, bubbles)
                elif filling == "contrast":
                    ys = np.broadcast_to(y, mask.shape)[rest]
                    if ys.size:
                        lo, hi = float(ys.min()), float(ys.max())
                        settle = np.clip((y - np.float32(lo)) / np.float32(max(hi - lo, 1.0)), 0.0, 1.0)
                        layered = np.broadcast_to(np.float32(content_hu) + np.float32(settle_hu) * settle, mask.shape)
                        value[rest] = layered[rest]
                else:
                    value[rest] = content_hu
            self._paint(slices, mask, "stomach", value)
            volume_ml = float(mask.sum()) * self.geometry.voxel_volume_ml
        self.properties.update(stomach_content_hu=round(float(content_hu), 1),
                               stomach_gas_fraction=round(float(gas_fraction), 2),
                               stomach_volume_ml=round(volume_ml, 1), stomach_placed_against_liver=touch,
                               duodenum_content=duodenum_content,
                               colon_content=colon_content if colon_drawn else "none")
        self._tubular_bowel(np.vstack([stomach[-1:], duodenum]), [stomach_r[-1]] + [duodenum_r] * 4,
                            duodenum_content, rng)
        if colon_drawn:
            self._tubular_bowel(colon, [colon_r] * 4, colon_content, rng)

    def _tubular_bowel(self, points: np.ndarray, radii: Sequence[float], content: str,
                       rng: np.random.Generator) -> None:
        """Duodenum or colon: wall, and inside it fluid, gas, oral contrast, chyme or feces
        (mottled, with gas), or nothing (collapsed: soft tissue throughout)."""
        v = self.values
        found = self._hollow(points, radii, rng, 2.0 * self.s, 25.0)
        if found is None:
            return
        slices, mask, depth, _, _ = found
        lumen = mask & (depth > max(rng.uniform(1.5, 3.0) * self.s, min(self.spacing_kji)))
        value = np.full(mask.shape, v["bowel_wall"], dtype=np.float32)
        if content == "fluid":
            value[lumen] = v["fluid"]
        elif content == "gas":
            value[lumen] = v["gas"]
        elif content == "contrast":
            value[lumen] = rng.uniform(150, 350)
        elif content == "chyme":
            value[lumen] = self._food(lumen, rng, rng.uniform(20, 45), False)
        elif content == "feces":
            value[lumen] = self._food(lumen, rng, rng.uniform(-30, 40), True)
        self._paint(slices, mask, "bowel", value)

    def _liver_neighbours(self) -> List[str]:
        """Tissues with a voxel face to face with the liver's (no gap between)."""
        if not hasattr(self, "liver_box"):
            return []
        box = tuple(slice(max(sl.start - 1, 0), sl.stop + 1) for sl in self.liver_box)
        organ = self.organ[box]
        liver = (organ == ORGAN["liver"]) | (organ == ORGAN["hepatic_vessel"])
        shell = ndimage.binary_dilation(liver) & ~liver
        return sorted(ORGAN_NAMES[i] for i in np.unique(organ[shell]))

    def _bowel(self) -> None:
        """Loops along the curves where two smooth random fields are both near zero (tubes that
        wind through the free space), with walls, and fluid or gas inside."""
        s, sz, v = self.s, self.sz, self.values
        top = self.zd - self._u(55, 80) * sz
        lo = (self.cx - self.A, self.cy - self.B, float(self.z[0]))
        hi = (self.cx + self.A, self.cy + self.B, top)
        box = self._box(lo, hi)
        if box is None:
            return
        slices, z, y, x = box
        allowed = self._allowed(slices, "visceral_fat")
        front = y < np.float32(self.spine_y - self.vert_ry * 0.3)
        flank = np.abs(x - np.float32(self.cx)) > np.float32(0.45 * self.A)
        allowed &= front | flank
        if not allowed.any():
            return
        scale = self._u(30, 45) * s
        first = _SmoothField(self.rng, allowed.shape, self.spacing_kji, scale).full()
        magnitude = first * first
        del first
        magnitude += _SmoothField(self.rng, allowed.shape, self.spacing_kji, scale).full() ** 2
        width = np.float32(self._u(0.9, 1.5)) ** 2  # fills 33-67 % of the free space
        loops = allowed & (magnitude < width)
        self._paint(slices, loops, "bowel", v["bowel_wall"])
        lumen = loops & (magnitude < width * np.float32(0.5))
        content = _SmoothField(self.rng, allowed.shape, self.spacing_kji, self._u(15, 25) * s).full()
        gas_level = np.float32(self._u(0.8, 1.8))
        contrast = self.rng.random() < 0.1 or getattr(self, "oral_contrast", False)
        fluid = v["fluid"] + (self._u(100, 250) if contrast else 0.0)
        value = np.where(content > gas_level, np.float32(v["gas"]), np.float32(fluid))
        self._paint(slices, lumen, "bowel", value)

    def _bladder(self) -> None:
        sz, s = self.sz, self.s
        center = (self.cx, self.cy - 0.2 * self.B, self.zd - self._u(340, 380) * sz)
        axes = (self._u(35, 55) * s, self._u(30, 45) * s, self._u(30, 45) * sz)
        found = self._ellipsoid(center, axes)
        if found is None:
            return
        slices, rho2, _ = found
        bladder = (rho2 <= 1.0) & self._allowed(slices, "visceral_fat", "bowel")
        self._paint(slices, bladder, "bladder", self.values["urine"])

    def _liver_vessels(self) -> None:
        """Portal tree from the hilum and three hepatic veins from the IVC, drawn inside the liver.

        Each tree grows towards random points of the liver: a branch heads for the centroid of
        its points, then splits them in two across their longest axis, one half per child."""
        if not hasattr(self, "liver_box"):
            return
        s, sz = self.s, self.sz
        box = self.liver_box
        liver = self.organ[box] == ORGAN["liver"]
        step = max(1, int(round(4.0 / min(self.spacing_xyz))))
        index = np.argwhere(liver[::step, ::step, ::step]) * step
        if len(index) < 20:
            return
        index = index[self.rng.choice(len(index), size=min(len(index), 1500), replace=False)]
        points = np.stack([self.x[box[2]][index[:, 2]], self.y[box[1]][index[:, 1]],
                           self.z[box[0]][index[:, 0]]], axis=1).astype(np.float64)
        target = np.array([self.spine_x - 40.0 * s, self.spine_y - self.vert_ry - 50.0 * s, self.zd - 85.0 * sz])
        hilum = points[int(np.argmin(np.linalg.norm(points - target, axis=1)))]
        self.portal_hilum = tuple(hilum)
        segments: List[tuple] = []
        self._branch(hilum, points, self._u(6.5, 8.5) * s, 0, 6, segments, "portal")
        root = np.array([self.ivc_top[0], self.ivc_top[1], self.zd - self._u(15, 30) * sz])
        upper = points[points[:, 2] > root[2] - 110.0 * sz]
        if len(upper) >= 9:
            angle = np.arctan2(upper[:, 1] - root[1], upper[:, 0] - root[0])
            order = np.argsort(angle)
            for group in np.array_split(upper[order], 3):
                self._branch(root, group, self._u(4.5, 6.5) * s, 0, 5, segments, "hepatic")
        for p0, p1, r0, r1, kind in segments:
            value = self.values["portal"] if kind == "portal" else self.values["hepatic_vein"]
            self._tube([p0, p1], [r0, r1], "hepatic_vessel", value, ("liver",))

    def _branch(self, start, points, radius, generation, last, segments, kind,
                rng: Optional[np.random.Generator] = None) -> None:
        rng = self.rng if rng is None else rng
        if len(points) < 2 or generation > last or radius < 0.7:
            return
        centroid = points.mean(axis=0)
        reach = centroid - start
        if np.linalg.norm(reach) < 2.0:
            return
        end = start + reach * rng.uniform(0.45, 0.75)
        segments.append((start, end, radius, radius * 0.9, kind))
        spread = points - centroid
        _, _, axes = np.linalg.svd(spread, full_matrices=False)
        normal = axes[0] + 0.3 * rng.normal(size=3)
        side = spread @ normal > 0
        child_radius = radius * 0.9 * rng.uniform(0.72, 0.85)
        for half in (points[side], points[~side]):
            self._branch(end, half, child_radius, generation + 1, last, segments, kind, rng)

    # ----- texture ---------------------------------------------------------------------------
    def add_texture(self) -> None:
        """Add a smooth random texture whose amplitude depends on the tissue; lungs get vessels."""
        amplitude = np.zeros(256, dtype=np.float32)
        for name, value in _TEXTURE_HU.items():
            amplitude[ORGAN[name]] = value
        amplitude[ORGAN["liver"]] = self._u(2.0, 5.0)
        if self.phase == "arterial":
            amplitude[ORGAN["spleen"]] = 15.0
        texture = _SmoothField(self.rng, self.shape, self.spacing_kji, self._u(4, 7))
        lung_id, lung_vessel = ORGAN["lung"], np.float32(self._u(2.2, 2.6))
        fat_id, fat_vessel = ORGAN["visceral_fat"], np.float32(self._u(2.3, 2.8))
        chunk = 32
        for k0 in range(0, self.shape[0], chunk):
            k1 = min(k0 + chunk, self.shape[0])
            values = texture.chunk(k0, k1)
            organ = self.organ[k0:k1]
            hu = self.hu[k0:k1]
            hu += amplitude[organ] * values
            vessel = (organ == lung_id) & (values > lung_vessel)
            hu[vessel] = np.float32(self.values["blood"] * 0.5)
            vessel = (organ == fat_id) & (values > fat_vessel)
            hu[vessel] = np.float32(self.values["portal"] * 0.6)
