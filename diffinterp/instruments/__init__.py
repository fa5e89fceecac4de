"""Instruments that read the records: logit lens, probes, and activation / path / attribution patching."""
