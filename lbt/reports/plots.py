"""What every section of a report draws with: matplotlib without a display,
PNGs written through epath (a report directory may be gs://)."""

import io
import os

from lbt.io import files


def pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def legend(ax, **kwargs) -> None:
  """A legend, when the axes have labelled artists."""
  if ax.get_legend_handles_labels()[0]:
    ax.legend(**kwargs)


def save(fig, report_dir: str, name: str) -> str:
  """Writes the figure as layout.REPORT/NAME, whole or not at all (a full disk:
  WriteError, the previous PNG kept), and returns its markdown image link."""
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=90)
  pyplot().close(fig)
  files.write_bytes_atomic(os.path.join(report_dir, name), png.getvalue(), "a plot")
  return f"![{name}]({name})"


def pct(value) -> str:
  """A fraction as a percentage with two decimals, or a dash when unknown."""
  return "—" if value is None else f"{100 * value:.2f}"


def g(value) -> str:
  """A number in four significant digits, or a dash when unknown."""
  return "—" if value is None else f"{value:.4g}"
