"""Reports of compress runs: JSON, Markdown, self-contained HTML, plots."""

from .tables import layer_rows, summary_rows
from .write import write_report

__all__ = ["layer_rows", "summary_rows", "write_report"]
