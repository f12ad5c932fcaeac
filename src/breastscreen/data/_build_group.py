"""Grouping classified images into exams and choosing each exam's id.

Used by :func:`breastscreen.data.build.build_manifest` once every file has been classified
(see ``_build_views``).
"""

from __future__ import annotations

from collections import defaultdict

from breastscreen.data._build_views import _Found
from breastscreen.data.types import Exam


def _group(found: list[_Found], problems: list[tuple[str, str]]) -> list[Exam]:
    groups: dict[str, list[_Found]] = defaultdict(list)
    for item in found:
        groups[item.group].append(item)

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
            uid = part[0].exam_fields.get("study_instance_uid")
            if uid and not uid.startswith(("accession:", "patient-date:")):
                exam.meta["study_instance_uid"] = uid
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
    if base.startswith(("accession:", "patient-date:")):
        base = base.split(":", 1)[1].replace(":", "-")
    return f"{base}-{suffix}" if suffix else base
