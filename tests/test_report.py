"""The demo's one-page report: sections, tables and relative figure links."""

from __future__ import annotations

from diffinterp.studies.report import StudyResult, format_value, write_report


def test_report_links_figures_relative_to_the_report(tmp_path):
    folder = tmp_path / "demo" / "smearing"
    folder.mkdir(parents=True)
    metrics = {"summary": {"rate": 0.25, "n": 12, "note": None, "nested": {"x": 1}}, "figures": ["rate.png"]}
    path = write_report(
        tmp_path / "demo" / "report.md",
        [StudyResult("smearing", folder, metrics, 3.2, "Token smearing.")],
        title="T",
        preamble="P",
    )
    text = path.read_text()
    assert text.startswith("# T\n\nP\n")
    assert "| rate | 0.25 |" in text and "| n | 12 |" in text and "| note | — |" in text
    assert "nested" not in text  # only flat summary values go in the table
    assert "![smearing: rate](smearing/rate.png)" in text
    assert "[`smearing/metrics.json`](smearing/metrics.json)" in text
    assert "## smearing (3 s)" in text and "Token smearing." in text


def test_format_value():
    assert format_value(0.123456) == "0.123"
    assert format_value(None) == "—"
    assert format_value(True) == "True"
    assert format_value(7) == "7"
