"""The built-in case studies: one module per phenomenon, each with ``run(model, *, n, out_dir, ...) -> metrics``.

They register in the ``diffinterp.case_studies`` entry-point group (``pyproject.toml``) exactly as an
external study does, and run as ``diffinterp case-study NAME``; the shared machinery (prompt sets,
batched runs, statistics, output folders, the registry) lives in :mod:`diffinterp.studies`.
"""
