"""The one pipeline every front end runs: load -> liver -> crop -> tumor ensemble ->
post-processing -> measurements. Stages are functions in ``stages/`` and ``postprocess/``;
this module orders them, times them, reports progress and handles the device."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from . import LIVER_LABEL, TUMOR_LABEL
from .errors import LiverTumorSegError
from .geometry import Geometry
from .inference import LoadedModel, resolve_device
from .measure import Measurements, measure_labelmap
from .models.card import ModelCard
from .models.registry import ModelRegistry
from .postprocess.active_contour import refine_lesions
from .postprocess.cleanup import close_lesions, compose_labelmap, remove_small_lesions, tumor_inside_liver
from .postprocess.interslice import interslice_consistency
from .postprocess.lesion_filter import drop_unconfident_lesions
from .progress import Progress
from .settings_schema import BY_NAME, LibraryDefault, checked_values, default
from .stages.crop import Box, crop_image, liver_box
from .stages.liver import clean_liver, liver_cut_by_scan, refine_liver, segment_liver, tumor_search_region
from .stages.parenchyma import ParenchymaCandidates, ParenchymaPrior, apply_parenchyma_prior
from .stages.tumor import ensemble_probability, member_stage_names, needs_hypodensity, tumor_mask

log = logging.getLogger(__name__)


@dataclass
class PipelineSettings:
    """Every switch of the pipeline; defaults are the full-quality run. The user-facing ones take
    their defaults (and their meaning) from ``settings_schema``; the tuned numbers among them
    (tumor threshold, minimum lesion, crop margin) become the tumor model card's ``postprocess``
    values where the caller gave none (:meth:`tuned_by`)."""

    liver_model: str = default("liver_model")
    tumor_model: str = default("tumor_model")
    device: str = default("device")
    fast: bool = default("fast")
    tta: bool = default("tta")
    liver_threshold: float = 0.5
    # Share of a model's sliding window that its neighbour overlaps in the full-quality run (``fast``:
    # none). 0.25 keeps the full-resolution run within its time budget; validation can score at 0.5,
    # where each voxel lies nearer a window's centre, so a choice between models depends less on
    # where the windows happen to fall (tune_postprocess --overlap).
    window_overlap: float = 0.25
    tumor_threshold: float = default("tumor_threshold")
    tumor_grow_threshold: Optional[float] = None  # a lesion extends over connected voxels above this (hysteresis)
    # Lesions drawn in fragments are closed over this radius, adding only voxels at least
    # lesion_closing_floor probable (postprocess.cleanup.close_lesions; 0: off). 10 mm / 0.1 chosen
    # on validation (30 cases, round-9 members): mean Dice per case 0.657 -> 0.669, large
    # iso-dense 0.487 -> 0.564, nothing found lost; without the floor 0.673 but separate
    # metastases on a darkened liver merged (0.724 -> 0.694).
    lesion_closing_mm: float = default("lesion_closing_mm")
    lesion_closing_floor: float = 0.1
    refine_liver: bool = default("refine_liver")  # the liver model's refinement model (card's refine_model), if any
    # How far outside the liver stage's mask the refinement may draw liver (stages.liver.limit_growth;
    # None: anywhere in the crop). The refinement sees 96 mm of context at 1.5 mm and grew the liver
    # into a food-filled stomach the liver stage had mostly left out (validation phantom 5014: spill
    # beyond 3 mm 133 mL after the liver stage, 239 after the refinement). 3 mm chosen on validation
    # phantoms 5002-5015 (validate_liver's cases, liver round 11): liver Dice 0.9415 -> 0.9427 whole,
    # 0.9307 -> 0.9314 on 40 mm slabs, spill beyond 3 mm mean 36.7 -> 28.8 mL (max 239 -> 157), tumour
    # kept inside the liver unchanged (0.950 / 0.881); 2 mm: 0.9425 / 0.9310, 27.4 mL; 5 mm: 0.9429,
    # 30.1 mL; no growth at all: 0.9408, 23.2 mL.
    refine_growth_mm: Optional[float] = 3.0
    keep_largest_liver: bool = True
    fill_liver_holes: bool = True  # fill the liver's enclosed holes; search for tumors in its in-slice holes too
    crop_margin_mm: float = default("crop_margin_mm")
    tumor_inside_liver: bool = True
    # A lesion at least half inside the liver mask keeps what bulges out of it up to this far
    # (postprocess.cleanup.tumor_inside_liver; 0: cut at the mask). The liver models leave a surface
    # lesion's bulge out. 10 mm chosen on validation (30 cases, the round-9 pair under flip TTA): mean
    # Dice per case 0.674 -> 0.676, surface lesions 0.815 -> 0.822, washout 0.416 -> 0.424; 5, 10 and
    # 20 mm equal; tumour outside the reference livers 13.7 -> 13.9 mL over all cases, none added on
    # tumour-free livers. Without TTA: 0.669 -> 0.670, 18.2 -> 19.2 mL.
    tumor_bulge_mm: float = 10.0
    parenchyma: ParenchymaPrior = field(default_factory=lambda: ParenchymaPrior(enabled=default("parenchyma_prior")))
    interslice: bool = default("interslice")
    active_contour: bool = default("active_contour")
    active_contour_iterations: int = 8
    min_lesion_ml: float = default("min_lesion_ml")
    min_lesion_confidence: float = default("min_lesion_confidence")  # lesion-candidate filter (postprocess.lesion_filter)
    min_liver_ml: float = 100.0

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "PipelineSettings":
        """Settings from user-facing values by schema name (checked; ``None`` = not given)."""
        settings = cls()
        for name, value in checked_values(values).items():
            if value is None or name not in values:
                continue
            owner, _, attribute = BY_NAME[name].pipeline_field.rpartition(".")
            if owner:
                setattr(settings, owner, replace(getattr(settings, owner), **{attribute: value}))
            else:
                setattr(settings, attribute, value)
        return settings

    def tuned_by(self, postprocess: Mapping[str, float]) -> "PipelineSettings":
        """These settings with a tumor model card's tuned numbers where they hold the library
        default (a value the caller gave is kept)."""
        tuned = {name: value for name, value in postprocess.items() if isinstance(getattr(self, name), LibraryDefault)}
        return replace(self, **tuned) if tuned else self

    @property
    def overlap(self) -> float:
        return 0.0 if self.fast else self.window_overlap

    @property
    def use_tta(self) -> bool:
        return self.tta and not self.fast


@dataclass
class TumorEvidence:
    """What the tumor post-processing starts from: the liver (CT grid), the crop box, the CT crop,
    the tumor search region and the ensemble's probability (and TTA uncertainty) on the crop."""

    liver: np.ndarray
    box: Box
    ct_crop: sitk.Image
    region: np.ndarray
    probability: np.ndarray
    uncertainty: Optional[np.ndarray] = None
    parenchyma: Optional[ParenchymaCandidates] = None  # when the members took the map: steps 1-3 of the prior


@dataclass
class SegmentationResult:
    """The pipeline's answer, on the input CT's grid."""

    labelmap: sitk.Image  # uint8: 0 background, 1 liver, 2 tumor
    measurements: Measurements
    models: List[Dict]
    device: str
    seconds_per_stage: Dict[str, float]
    settings: Dict
    tumor_uncertainty: Optional[sitk.Image] = None  # TTA std on the liver crop, when TTA ran
    tumor_probability: Optional[sitk.Image] = None  # the ensemble's TTA mean on the liver crop, when TTA ran
    warnings: List[str] = field(default_factory=list)


PARTIAL_LIVER_WARNING = ("the liver reaches the first or last slice of the scan: it is only partly in view, so the "
                         "liver volume and TLVR cover only the part in view")


class Pipeline:
    """Loads the liver model and tumor ensemble once and segments any number of CTs."""

    def __init__(self, settings: Optional[PipelineSettings] = None, registry: Optional[ModelRegistry] = None):
        settings = settings or PipelineSettings()
        self.registry = registry or ModelRegistry.default()
        liver_card = self.registry.resolve(settings.liver_model, task="liver")
        tumor_card = self.registry.resolve(settings.tumor_model, task="tumor")
        self.tumor_postprocess: Dict[str, float] = dict(tumor_card.postprocess)  # the card's tuned numbers
        self.settings = settings.tuned_by(self.tumor_postprocess)
        liver_members = self.registry.ensemble_members(liver_card)
        if len(liver_members) != 1:
            raise LiverTumorSegError(f"liver model '{liver_card.name}' must be a single model")
        self.liver_model = LoadedModel.load(self.registry.with_weights(liver_members[0]))
        self.liver_refine_model: Optional[LoadedModel] = None
        refine_name = liver_members[0].refine_model
        if refine_name and self.settings.refine_liver:
            refine_card = self.registry.resolve(refine_name, task="liver_refine")
            if not isinstance(refine_card, ModelCard):
                raise LiverTumorSegError(f"liver refinement model '{refine_name}' must be a single model")
            self.liver_refine_model = LoadedModel.load(self.registry.with_weights(refine_card))
        self.tumor_members = [LoadedModel.load(self.registry.with_weights(c))
                              for c in self.registry.ensemble_members(tumor_card)]
        self.tumor_weights = (tumor_card.normalized_weights() if hasattr(tumor_card, "normalized_weights")
                              else [1.0])
        # per member, whether the flip TTA (when on) applies to it (the ensemble card's member ``tta``)
        self.tumor_member_tta = ([m.tta for m in tumor_card.members] if tumor_card.kind == "ensemble"
                                 else [True])
        summaries = [liver_card.summary()]
        if self.liver_refine_model is not None:
            summaries.append(self.liver_refine_model.card.summary())
        summaries.append(tumor_card.summary())
        if tumor_card.kind == "ensemble":
            summaries += [m.card.summary() for m in self.tumor_members]
        self.model_summaries = summaries
        self.device = resolve_device(self.settings.device)

    def stage_names(self) -> List[str]:
        """Progress stages in order, for front ends that show them before the run."""
        refine = ["liver_refine"] if self.liver_refine_model is not None else []
        return ["liver", "crop"] + refine + member_stage_names(self.tumor_members) + ["postprocess", "measure"]

    def run(self, ct: sitk.Image, progress: Optional[Progress] = None) -> SegmentationResult:
        """Segment one CT (float32 HU image). Falls back to the CPU once on GPU out-of-memory."""
        progress = progress or Progress()
        warnings: List[str] = []
        try:
            return self._run_on(ct, self.device, progress, warnings)
        except MemoryError as exc:
            if self.device.type == "cuda":
                message = "the GPU ran out of memory; running again on the CPU (slower)"
                log.warning(message)
                warnings.append(message)
                return self._run_on(ct, torch.device("cpu"), progress, warnings)
            raise LiverTumorSegError("out of memory while segmenting; close other programs, use --fast, "
                                     f"or run on a machine with more memory ({str(exc)[:80]})") from None

    def _run_on(self, ct: sitk.Image, device: torch.device, progress: Progress,
                warnings: List[str]) -> SegmentationResult:
        timings: Dict[str, float] = {}
        evidence = self._evidence(ct, device, progress, warnings, timings)
        return self._finish(ct, evidence, self.settings, device, progress, warnings, timings)

    def tumor_evidence(self, ct: sitk.Image) -> TumorEvidence:
        """The stages up to the tumor ensemble's probability, for tuning the post-processing on
        validation data without running the models again (see :meth:`finish`)."""
        return self._evidence(ct, self.device, Progress(), [], {})

    def finish(self, ct: sitk.Image, evidence: TumorEvidence,
               settings: Optional[PipelineSettings] = None) -> SegmentationResult:
        """Post-processing and measurements of ``evidence`` with ``settings`` (default: this
        pipeline's; tuned numbers they leave at the library default are the tumor card's); only
        the post-processing switches of ``settings`` are used."""
        settings = self.settings if settings is None else settings.tuned_by(self.tumor_postprocess)
        return self._finish(ct, evidence, settings, self.device, Progress(), [], {})

    @staticmethod
    @contextmanager
    def _timed(stage: str, progress: Progress, timings: Dict[str, float]) -> Iterator[None]:
        progress.report(stage, 0.0)
        start = time.perf_counter()
        yield
        timings[stage] = round(time.perf_counter() - start, 3)
        progress.report(stage, 1.0)

    def liver_mask(self, ct: sitk.Image) -> np.ndarray:
        """The liver stages alone (the liver model, the crop and the refinement): the liver mask
        (uint8, the CT's grid) the tumor stage searches, for validating liver models."""
        return self._liver(ct, self.device, Progress(), [], {})[0]

    def _liver(self, ct: sitk.Image, device: torch.device, progress: Progress, warnings: List[str],
               timings: Dict[str, float]) -> Tuple[np.ndarray, Box, sitk.Image]:
        """The liver mask, the liver crop's box and the CT cropped to it."""
        s = self.settings
        geometry = Geometry.of(ct)
        with self._timed("liver", progress, timings):
            liver = segment_liver(ct, self.liver_model, device, overlap=s.overlap, threshold=s.liver_threshold,
                                  keep_largest=s.keep_largest_liver, fill=s.fill_liver_holes,
                                  on_progress=lambda f: progress.report("liver", 0.9 * f), tta=s.use_tta)
        liver_ml = float(np.count_nonzero(liver)) * geometry.voxel_volume_ml
        if liver_ml < s.min_liver_ml or not liver.any():
            raise LiverTumorSegError(f"no liver found in view (the liver model found {liver_ml:.0f} mL, less than "
                                     f"{s.min_liver_ml:.0f} mL); give an abdominal CT that covers the liver")

        with self._timed("crop", progress, timings):
            spacing_kji = geometry.spacing[::-1]
            box = liver_box(liver, spacing_kji, s.crop_margin_mm)
            ct_crop = crop_image(ct, box)

        if self.liver_refine_model is not None:
            with self._timed("liver_refine", progress, timings):
                liver = self._refined_liver(ct_crop, liver, box, geometry, device,
                                            lambda f: progress.report("liver_refine", 0.9 * f))
        if liver_cut_by_scan(liver, geometry.axial_array_axis()):
            warnings.append(PARTIAL_LIVER_WARNING)
        return liver, box, ct_crop

    def _evidence(self, ct: sitk.Image, device: torch.device, progress: Progress, warnings: List[str],
                  timings: Dict[str, float]) -> TumorEvidence:
        s = self.settings
        geometry = Geometry.of(ct)
        spacing_kji = geometry.spacing[::-1]
        liver, box, ct_crop = self._liver(ct, device, progress, warnings, timings)
        stages = member_stage_names(self.tumor_members)

        def member_progress(index: int, fraction: float) -> None:
            progress.report(stages[index], fraction)

        axial = geometry.axial_array_axis()
        region = tumor_search_region(liver[box], axial) if s.fill_liver_holes else liver[box]
        hypodensity, candidates = None, None
        if needs_hypodensity(self.tumor_members):
            start = time.perf_counter()
            candidates = ParenchymaCandidates.of(sitk.GetArrayViewFromImage(ct_crop), region, spacing_kji,
                                                 s.parenchyma)
            hypodensity = sitk.GetImageFromArray(candidates.hypodensity)
            hypodensity.CopyInformation(ct_crop)
            timings["parenchyma_map"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        probability, uncertainty = ensemble_probability(ct_crop, self.tumor_members, self.tumor_weights, device,
                                                        overlap=s.overlap, tta=s.use_tta,
                                                        on_progress=member_progress, hypodensity=hypodensity,
                                                        member_tta=self.tumor_member_tta)
        timings["tumor"] = round(time.perf_counter() - start, 3)
        return TumorEvidence(liver=liver, box=box, ct_crop=ct_crop, region=region, probability=probability,
                             uncertainty=uncertainty, parenchyma=candidates)

    def _finish(self, ct: sitk.Image, evidence: TumorEvidence, s: PipelineSettings, device: torch.device,
                progress: Progress, warnings: List[str], timings: Dict[str, float]) -> SegmentationResult:
        geometry = Geometry.of(ct)
        spacing_kji = geometry.spacing[::-1]
        liver, box, ct_crop, region = evidence.liver, evidence.box, evidence.ct_crop, evidence.region
        with self._timed("postprocess", progress, timings):
            axial = geometry.axial_array_axis()
            probability = apply_parenchyma_prior(evidence.probability, sitk.GetArrayViewFromImage(ct_crop), region,
                                                 spacing_kji, s.parenchyma, evidence.parenchyma)
            tumor = tumor_mask(probability, s.tumor_threshold, s.tumor_grow_threshold)
            if s.lesion_closing_mm > 0:
                tumor = close_lesions(tumor, probability, spacing_kji, s.lesion_closing_mm, s.lesion_closing_floor)
            del probability
            if s.tumor_inside_liver:
                tumor = tumor_inside_liver(tumor, region, spacing_kji, s.tumor_bulge_mm)
            if s.interslice:
                tumor = interslice_consistency(tumor, axial)
            if s.active_contour and tumor.any():
                hu_crop = sitk.GetArrayViewFromImage(ct_crop)
                tumor = refine_lesions(hu_crop, tumor, region, spacing_kji,
                                       iterations=s.active_contour_iterations, progress=progress)
            if s.min_lesion_ml > 0:
                tumor = remove_small_lesions(tumor, geometry.voxel_volume_ml, s.min_lesion_ml)
            if s.min_lesion_confidence > 0:
                tumor = drop_unconfident_lesions(tumor, evidence.probability, s.min_lesion_confidence)
            if s.tumor_inside_liver:
                tumor = tumor_inside_liver(tumor, region, spacing_kji, s.tumor_bulge_mm)
            full_tumor = np.zeros_like(liver)
            full_tumor[box] = tumor
            labels = compose_labelmap(liver, full_tumor)
            del full_tumor

        with self._timed("measure", progress, timings):
            measurements = measure_labelmap(labels, geometry, sitk.GetArrayViewFromImage(ct))

        labelmap = sitk.GetImageFromArray(labels)
        labelmap.CopyInformation(ct)
        uncertainty_image, probability_image = None, None
        if evidence.uncertainty is not None:
            uncertainty_image = sitk.GetImageFromArray(evidence.uncertainty)
            uncertainty_image.CopyInformation(ct_crop)
            probability_image = sitk.GetImageFromArray(evidence.probability)
            probability_image.CopyInformation(ct_crop)
        return SegmentationResult(labelmap=labelmap, measurements=measurements, models=self.model_summaries,
                                  device=device.type, seconds_per_stage=timings, settings=asdict(s),
                                  tumor_uncertainty=uncertainty_image, tumor_probability=probability_image,
                                  warnings=list(warnings))

    def _refined_liver(self, ct_crop: sitk.Image, liver: np.ndarray, box: Box, geometry: Geometry,
                       device: torch.device, on_progress: Callable[[float], None]) -> np.ndarray:
        """The refinement model's liver (inside the crop, cleaned like the liver stage's); the
        liver stage's mask when the refinement finds no liver at all."""
        s = self.settings
        assert self.liver_refine_model is not None
        refined_crop = refine_liver(ct_crop, liver[box], self.liver_refine_model, device, overlap=s.overlap,
                                    threshold=s.liver_threshold, on_progress=on_progress, tta=s.use_tta,
                                    max_growth_mm=s.refine_growth_mm)
        refined = np.zeros_like(liver)
        refined[box] = refined_crop
        refined = clean_liver(refined, s.keep_largest_liver, s.fill_liver_holes)
        if not refined.any():
            log.warning("the liver refinement model found no liver; keeping the liver stage's mask")
            return liver
        return refined


assert LIVER_LABEL == 1 and TUMOR_LABEL == 2  # the labelmap contract of every writer
