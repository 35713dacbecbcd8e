"""Reports of compress runs: JSON, Markdown, HTML, plots."""
from .write import summary_rows, write_report

__all__ = ["summary_rows", "write_report"]
