"""Optional sections of an evaluation, each adding jobs to the shared bootstrap engine.

:mod:`~breastscreen.evaluation.sections.birads` (3-class BI-RADS macAUC when the predictions
carry ``birads_*`` columns) and :mod:`~breastscreen.evaluation.sections.readers` (reader study,
hybrid and ensembles when reader scores are given).  The main tasks, populations, branches and
subgroups are computed by :func:`breastscreen.evaluation.evaluate.evaluate` itself.
"""
