"""launch/colab.ipynb: its code cells run top to bottom on CPU (tiny settings:
two searched study cells of three updates a trial) and show the report's plots."""

import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(REPO, "launch", "colab.ipynb")


def test_notebook_runs_the_quick_study_and_shows_plots(tmp_path, monkeypatch, data_dir):
  for module in ("lbt.study", "lbt.report", "configs.studies.fashion_mnist"):
    if importlib.util.find_spec(module) is None:
      pytest.skip(f"{module} has not landed yet; the notebook runs through it")
  nbformat = pytest.importorskip("nbformat", reason="pip install nbformat nbclient ipykernel")
  nbclient = pytest.importorskip("nbclient", reason="pip install nbformat nbclient ipykernel")
  pytest.importorskip("ipykernel", reason="pip install nbformat nbclient ipykernel")
  workdir = tmp_path / "study"
  monkeypatch.setenv("LBT_COLAB_TINY", "1")
  monkeypatch.setenv("LBT_COLAB_WORKDIR", str(workdir))
  monkeypatch.setenv("LBT_DATA_DIR", data_dir)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device, as on a Colab CPU runtime
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                 for o in outputs)
  assert f"lbt from {REPO}" in text  # installed from this checkout, not cloned
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  plots = sorted(p for p in os.listdir(workdir / "report") if p.endswith(".png"))
  assert plots and len(images) == len(plots), (plots, len(images))
  assert (workdir / "report" / "report.md").exists()
  # Two searched cells, each the trials of its learning-rate search.
  trials = [p for p in os.listdir(workdir) if (workdir / p / "metrics.jsonl").exists()]
  cells = {json.loads((workdir / p / "role.json").read_text())["cell"] for p in trials}
  assert len(cells) == 2 and len(trials) >= 6
