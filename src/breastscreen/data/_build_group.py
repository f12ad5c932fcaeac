"""Grouping classified images into exams and choosing each exam's id.

Used by :func:`breastscreen.data.build.build_manifest` once every file has been classified
(see ``_build_views``).
"""

from __future__ import annotations

from collections import defaultdict

from breastscreen.data._build_views import _Found
from breastscreen.data.types import Exam


GROUP_BY = ("auto", "study", "patient-date")


def _patient_date_key(item: _Found) -> str | None:
    patient, date = item.exam_fields.get("patient_key") or (None, None)
    if not patient:
        return None
    return f"patient-date:{patient}:{date}" if date else f"patient:{patient}"


def choose_grouping(found: list[_Found], group_by: str = "auto") -> str:
    """``study`` or ``patient-date`` for the DICOM images of a scan (see :func:`_group`)."""
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
    if group_by != "auto":
        return group_by
    dicom = [it for it in found if not it.group.startswith("name:")]
    studies: dict[str, int] = defaultdict(int)
    for it in dicom:
        studies[it.group] += 1
    keys = [_patient_date_key(it) for it in dicom]
    shared = len(keys) != len(set(keys)) and None not in keys
    # Every image its own study, and some images share a patient (+ date): an archive that
    # stores one study per image (CBIS-DDSM); group those images by patient and date instead.
    if len(dicom) >= 2 and all(n == 1 for n in studies.values()) and shared:
        return "patient-date"
    return "study"


def _group(found: list[_Found], problems: list[tuple[str, str]], group_by: str = "auto") -> list[Exam]:
    """Exams from classified images: DICOM by study (or patient + date, see :func:`choose_grouping`),
    named files by their exam-id prefix."""
    grouping = choose_grouping(found, group_by)
    groups: dict[str, list[_Found]] = defaultdict(list)
    for item in found:
        key = item.group
        if grouping == "patient-date" and not key.startswith("name:"):
            pd_key = _patient_date_key(item)
            if pd_key is None:
                problems.append((item.path, "no PatientID to group by (grouping by patient and date)"))
                continue
            key = pd_key
        groups[key].append(item)

    # DICOM studies are shown by AccessionNumber when it is unique to the study and not a file-name id.
    accession_users: dict[str, set[str]] = defaultdict(set)
    for key, items in groups.items():
        if not key.startswith("name:"):
            for it in items:
                if it.exam_fields.get("accession"):
                    accession_users[it.exam_fields["accession"]].add(key)
    name_ids = {k[5:] for k in groups if k.startswith("name:")}

    exams: dict[str, Exam] = {}
    for key in sorted(groups):
        items = sorted(groups[key], key=lambda it: (it.view, it.path))
        modalities = {it.modality for it in items}
        if len(modalities) > 1:
            # Mixed MG + US under one study: split into two exams with a modality suffix.
            parts = [(f"{key}#{m.value}", [it for it in items if it.modality is m]) for m in sorted(modalities)]
        else:
            parts = [(key, items)]
        for part_key, part in parts:
            exam_id = _exam_id(part_key, part, accession_users, name_ids)
            if exam_id in exams:
                for it in part:
                    problems.append((it.path, f"exam id {exam_id!r} is already used by another study"))
                continue
            exam = Exam(exam_id=exam_id, modality=part[0].modality)
            for field_name in ("patient_id", "study_date", "age"):
                values = sorted({str(it.exam_fields.get(field_name)) for it in part if it.exam_fields.get(field_name)})
                if values:
                    value = values[0]
                    setattr(exam, field_name, float(value) if field_name == "age" else value)
                    if len(values) > 1:
                        exam.meta[f"{field_name}_conflict"] = values
            if exam.meta.get("grouped_by") == "patient-date":
                # PatientID held the view words (..._LEFT_CC): the exam's patient is the common part.
                exam.patient_id = part[0].exam_fields["patient_key"][0]
                exam.meta["patient_ids"] = exam.meta.pop("patient_id_conflict", [exam.patient_id])
            uids = sorted({str(it.exam_fields.get("study_instance_uid")) for it in part
                           if it.exam_fields.get("study_instance_uid")})
            if key.startswith(("patient-date:", "patient:")) and grouping == "patient-date":
                exam.meta["grouped_by"] = "patient-date"
                exam.meta["study_instance_uids"] = uids
            elif uids and not uids[0].startswith(("accession:", "patient-date:")):
                exam.meta["study_instance_uid"] = uids[0]
            if part[0].exam_fields.get("accession"):
                exam.meta["accession_number"] = part[0].exam_fields["accession"]
            for it in part:
                exam.views.setdefault(it.view, []).append(it.image)
            exams[exam_id] = exam
    return [exams[k] for k in sorted(exams)]


def _exam_id(key: str, items: list[_Found], accession_users: dict[str, set[str]], name_ids: set[str]) -> str:
    if key.startswith("name:"):
        return key[5:]
    base, _, suffix = key.partition("#")
    accessions = {it.exam_fields.get("accession") for it in items}
    if len(accessions) == 1:
        acc = next(iter(accessions))
        if acc and len(accession_users[acc]) == 1 and acc not in name_ids:
            return f"{acc}-{suffix}" if suffix else acc
    if base.startswith(("accession:", "patient-date:", "patient:")):
        base = base.split(":", 1)[1].replace(":", "-")
    return f"{base}-{suffix}" if suffix else base
