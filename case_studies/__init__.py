"""Case studies: one module per phenomenon, each with ``run(model, *, n, out_dir, ...) -> metrics``.

``STUDIES`` maps the CLI name (``diffinterp case-study NAME``) to the module; the shared machinery
(prompt sets, batched runs, statistics, output folders) lives in :mod:`diffinterp.studies` and
:mod:`diffinterp.stats`.
"""

STUDIES = {
    "non-chronological": "case_studies.non_chronological",
    "smearing": "case_studies.smearing",
    "intermediate-context": "case_studies.intermediate_context",
    "monitorability": "case_studies.monitorability",
    "variable-transparency": "case_studies.variable_transparency",
    "self-correction": "case_studies.self_correction",
}
