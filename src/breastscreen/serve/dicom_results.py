"""DICOM objects the node sends back: a Comprehensive SR with the probabilities, and heatmap overlays.

* :func:`build_report` — a Comprehensive SR following TID 1500 (Measurement Report), made with
  highdicom. One measurement group per breast with an image (finding site SNOMED CT "Left
  breast" 80248007 / "Right breast" 73056007), each holding two numeric measurements in
  [0, 1] (UCUM unit ``1``): (111047, DCM, "Probability of cancer") = the malignant probability,
  and (BENIGN-P, 99BSCREEN, "Probability of benign finding") = the benign probability (no
  standard code exists for it; ``99`` marks a private coding scheme as PS3.16 asks). Each group
  references its breast's source images and names the algorithm (TID 4019: model name, first 12
  hex digits of the checkpoint SHA-256, and the not-for-clinical-use statement as parameters);
  the device observer is the node itself. The image library lists every source image.
* :func:`build_overlays` — one Secondary Capture (RGB) per view, in the source study, new Series
  and SOP Instance UIDs: the source image in its own geometry with the malignant (red) and
  benign (green) heatmaps blended in, and the not-for-clinical-use notice burned in
  (BurnedInAnnotation YES). Models without heatmaps give no overlays.

Both are marked as derived, research objects: SeriesDescription says "NOT FOR CLINICAL USE".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from breastscreen.data.types import MG_VIEWS, view_side
from breastscreen.errors import BreastscreenError

MANUFACTURER = "breastscreen (research software)"
SR_SERIES_NUMBER = 9901
OVERLAY_SERIES_NUMBER = 9902
NOTICE_SHORT = "RESEARCH ONLY - NOT FOR CLINICAL USE"
OVERLAY_MAX_SIDE = 2048
# Blend weight of a map value of 1 (0.5: the anatomy stays visible under a saturated heatmap).
OVERLAY_ALPHA = 0.5
BENIGN_CODE = ("BENIGN-P", "99BSCREEN", "Probability of benign finding")
# "U": an ultrasound bag without laterality (no ImageLaterality in its images): the breast, side unknown.
BREAST_SITES = {"L": ("80248007", "SCT", "Left breast"), "R": ("73056007", "SCT", "Right breast"),
                "U": ("76752008", "SCT", "Breast structure")}


@dataclass
class ModelInfo:
    """What the SR says about the model that made the numbers."""

    name: str
    version: str  # first 12 hex digits of the checkpoint's SHA-256
    device_uid: str  # the node's device observer UID (stable per data directory)
    node_name: str  # the node's AE title
    notice: str


# Type 2 attributes of the Patient and General Study modules: highdicom copies them from the
# source into every derived object, so a source that omitted one (allowed only for type 3) gets it empty.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "AccessionNumber")


def with_type2(ds: Any) -> Any:
    """A shallow copy of a source header with the study/patient type 2 attributes present (empty when absent)."""
    import copy

    out = copy.copy(ds)
    for keyword in _TYPE2:
        if keyword not in out:
            setattr(out, keyword, "")
    return out


def _ds_value(value: float) -> float:
    # DS holds 16 characters; rounding to 10 decimals keeps every probability exact to 1e-10.
    return float(round(float(value), 10))


def build_report(values: dict[str, float | None], sources: Sequence[Any], sides: Sequence[str | None],
                 model: ModelInfo, series_uid: str, sop_uid: str) -> Any:
    """A Comprehensive SR (TID 1500) with per-breast probabilities.

    ``sources`` are the headers of the images the prediction used (one study); ``sides`` their
    breast (``L``/``R``, as ``manifest build`` identified it; ``None`` for an ultrasound image
    without laterality), which decides the group that references each image. ``values`` are the
    predictions-table values: ``left_*``, ``right_*`` and ``unknown_*`` (finding site "Breast
    structure").
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if len(sides) != len(sources):
        raise BreastscreenError(f"{len(sources)} source images but {len(sides)} sides")
    if not sources:
        raise BreastscreenError("no source image to report on")
    sources = [with_type2(s) for s in sources]
    unit = hd.sr.CodedConcept("1", "UCUM", "no units")
    algorithm = hd.sr.AlgorithmIdentification(
        name=model.name[:64], version=model.version[:64], parameters=[model.notice[:1024]])
    groups = []
    for side, word, name in (("L", "left", "left breast"), ("R", "right", "right breast"),
                             ("U", "unknown", "breast of unknown side")):
        malignant, benign = values.get(f"{word}_malignant"), values.get(f"{word}_benign")
        if malignant is None and benign is None:
            continue  # no image of this breast: no numbers to report
        site = hd.sr.FindingSite(hd.sr.CodedConcept(*BREAST_SITES[side]))
        measurements = []
        if malignant is not None:
            measurements.append(hd.sr.Measurement(
                name=codes.DCM.ProbabilityOfCancer, value=_ds_value(malignant), unit=unit, algorithm_id=algorithm,
                finding_sites=[site]))
        if benign is not None:
            measurements.append(hd.sr.Measurement(
                name=hd.sr.CodedConcept(*BENIGN_CODE), value=_ds_value(benign), unit=unit, algorithm_id=algorithm,
                finding_sites=[site]))
        breast_sources = [s for s, sd in zip(sources, sides) if (sd or "U") == side]
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name),
            finding_type=codes.SCT.Breast,
            algorithm_id=algorithm,
            finding_sites=[site],
            measurements=measurements,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(s) for s in breast_sources] or None,
        ))
    if not groups:
        raise BreastscreenError("the prediction holds no per-breast probability")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=model.device_uid, name=model.node_name[:64], manufacturer_name=MANUFACTURER,
            model_name=model.name[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.Mammography,
        imaging_measurements=groups,
        # No image library: highdicom fills its entries with NUM items (rows, columns, spacing) that
        # readers scanning the report for numbers would mistake for results; groups reference images.
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=list(sources), content=report[0], series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=MANUFACTURER, is_complete=True, is_final=False,
        is_verified=False, series_description=f"breastscreen AI result - {NOTICE_SHORT}"[:64],
    )
    return sr


def _orientation(source: Any, view: str) -> tuple[str, str]:
    """Row and column directions for the overlay (the source's own when it gives single letters)."""
    raw = source.get("PatientOrientation") if source is not None else None
    letters = set("APLRHF")
    if raw is not None and len(raw) == 2 and all(str(v) and str(v)[0] in letters for v in raw):
        # Mammography uses compound values such as "FR"; SC images take one letter per axis.
        return str(raw[0])[0], str(raw[1])[0]
    # Standard hanging for a view with no usable orientation: chest wall away from the row direction.
    return {"L-CC": ("A", "R"), "R-CC": ("P", "L"), "L-MLO": ("A", "F"), "R-MLO": ("P", "F")}.get(view, ("A", "F"))


def overlay_pixels(image: np.ndarray, maps: dict[str, np.ndarray], caption: str,
                   max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """An RGB uint8 picture: ``image`` windowed to grey with the benign (green) and malignant (red) maps blended in."""
    import cv2

    from breastscreen.viz.overlay import display_resize, resize_map_to, window_grey

    grey = window_grey(display_resize(np.ascontiguousarray(image, dtype=np.float32), max_side))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for name, colour in (("benign", (0.0, 0.85, 0.0)), ("malignant", (1.0, 0.0, 0.0))):
        if name not in maps:
            continue
        m = np.clip(np.nan_to_num(resize_map_to(np.asarray(maps[name], np.float32), grey.shape)), 0.0, 1.0)
        a = (OVERLAY_ALPHA * m)[..., None]
        rgb = rgb * (1.0 - a) + np.asarray(colour, np.float32) * a
    out = np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
    h, w = out.shape[:2]
    scale = max(0.3, w / 900.0)
    thickness = max(1, int(round(scale * 1.5)))
    y = int(14 * scale) + 4
    for k, line in enumerate((NOTICE_SHORT, caption)):
        if line:
            cv2.putText(out, line, (4, y + k * int(16 * scale + 4)), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.45,
                        (255, 255, 0), thickness, cv2.LINE_AA)
    return np.ascontiguousarray(out)


def build_overlays(panels: dict[str, Any], sources_by_view: dict[str, Any], values: dict[str, float | None],
                   series_uid: str, sop_uids: dict[str, str]) -> dict[str, Any]:
    """One Secondary Capture per view with heatmaps (view -> dataset); views without maps are skipped."""
    import highdicom as hd
    from pydicom import Dataset

    from breastscreen.inference.report import original_panel

    out: dict[str, Any] = {}
    for number, view in enumerate([v for v in MG_VIEWS if v in panels], start=1):
        prepared, maps = panels[view]
        if not maps:
            continue
        if view not in sources_by_view:
            continue
        source = with_type2(sources_by_view[view])
        if prepared.source and "source_path" not in (prepared.record or {}):
            # The in-memory Predictor names the file in ``source`` only; the panel reads it from the record.
            prepared = dataclasses.replace(prepared, record={**(prepared.record or {}), "source_path": prepared.source})
        panel = original_panel(prepared, maps, view)
        word = "left" if view_side(view) == "L" else "right"
        p = values.get(f"{word}_malignant")
        caption = f"{view}: malignant red, benign green" + (f"; {word} malignant p={p:.2f}" if p is not None else "")
        pixels = overlay_pixels(panel.image, dict(panel.maps), caption)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=OVERLAY_SERIES_NUMBER,
            sop_instance_uid=sop_uids[view], instance_number=number, manufacturer=MANUFACTURER,
            laterality=view_side(view), patient_orientation=_orientation(source, view),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        sc.SeriesDescription = f"breastscreen heatmaps - {NOTICE_SHORT}"[:64]
        sc.BurnedInAnnotation = "YES"
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.DerivationDescription = "breastscreen heatmap overlay (malignant red, benign green); not for clinical use"
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        sc.SourceImageSequence = [item]
        if view_side(view) in ("L", "R"):
            sc.ImageLaterality = view_side(view)
        out[view] = sc
    return out
