"""Detectors of the paper's diffusion-specific phenomena, shared by the case studies: settling
(non-chronological reasoning), token and sequence smears, transient tokens (intermediate context),
monitors. Pure functions of records; their figures are in :mod:`diffinterp.figures`."""
