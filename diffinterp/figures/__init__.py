"""Matplotlib figures of records, instruments and phenomena, in one style (:mod:`.style`).

Each function returns a ``Figure``; write it with :func:`diffinterp.records.files.save_figure`
(PNG + SVG, atomically) or through a study's :class:`~diffinterp.studies.output.StudyOutput`.
"""
