"""A one-page Markdown report of case-study runs: each study's headline numbers and figures.

    from diffinterp.studies.report import StudyResult, write_report
    write_report("out/demo/report.md", [StudyResult("smearing", "out/demo/smearing", metrics, 41.0)])

The report links the figures and ``metrics.json`` files by paths relative to the report, so the
output folder can be moved or published as a whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffinterp.records.files import write_text_atomic


@dataclass
class StudyResult:
    """One study run: its CLI ``name``, the folder it wrote, its metrics and the seconds it took."""

    name: str
    out_dir: str | Path
    metrics: dict[str, Any]
    seconds: float | None = None
    description: str = ""


def format_value(value: Any) -> str:
    """A table cell: floats to 3 significant digits, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _summary_rows(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    summary = metrics.get("summary")
    if isinstance(summary, dict):
        return [(key, value) for key, value in summary.items() if not isinstance(value, (dict, list))]
    return [(key, value) for key, value in metrics.items() if isinstance(value, (int, float, str)) or value is None]


def study_section(result: StudyResult, report_dir: Path) -> str:
    """The Markdown section of one study: heading, summary table, figures."""
    folder = Path(result.out_dir)
    relative = Path(os.path.relpath(folder, report_dir))
    timing = f" ({result.seconds:.0f} s)" if result.seconds is not None else ""
    lines = [f"## {result.name}{timing}", ""]
    if result.description:
        lines += [result.description, ""]
    lines += [f"Metrics: [`{relative / 'metrics.json'}`]({(relative / 'metrics.json').as_posix()})", ""]
    rows = _summary_rows(result.metrics)
    if rows:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {key} | {format_value(value)} |" for key, value in rows]
        lines.append("")
    for figure in result.metrics.get("figures", []):
        lines.append(f"![{result.name}: {Path(figure).stem}]({(relative / figure).as_posix()})")
    lines.append("")
    return "\n".join(lines)


def render_report(results: list[StudyResult], report_dir: str | Path, *, title: str, preamble: str = "") -> str:
    """The whole report as Markdown."""
    report_dir = Path(report_dir)
    parts = [f"# {title}", ""]
    if preamble:
        parts += [preamble, ""]
    parts += ["| study | seconds | figures |", "| --- | --- | --- |"]
    for result in results:
        seconds = f"{result.seconds:.0f}" if result.seconds is not None else "—"
        parts.append(f"| [{result.name}](#{result.name}) | {seconds} | {len(result.metrics.get('figures', []))} |")
    parts.append("")
    parts += [study_section(result, report_dir) for result in results]
    return "\n".join(parts)


def write_report(path: str | Path, results: list[StudyResult], *, title: str, preamble: str = "") -> Path:
    """Write the report atomically to ``path`` (Markdown)."""

    path = Path(path)
    return write_text_atomic(path, render_report(results, path.parent, title=title, preamble=preamble))


__all__ = ["StudyResult", "render_report", "study_section", "write_report"]
