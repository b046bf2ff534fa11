"""The import layering of lbt is a contract: each module imports only modules
on lower floors, never one on its own floor or above, imports inside
functions included. A new module must be given a floor here."""

import ast
import os

import pytest

LBT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lbt")

# Top to bottom. The packages lbt.optim, lbt.models and lbt.data are one unit
# each (their files import one another freely).
FLOORS = (
    ("lbt.limit",),                           # where is my limit (uses studies)
    ("lbt.study",),                           # runs a study file's points
    ("lbt.report", "lbt.limit_report"),       # report.md, limit.md from the results
    ("lbt.main",),                            # one run from the command line
    ("lbt.train",),                           # set-up, loop, summary
    ("lbt.programs", "lbt.workdir", "lbt.cli", "lbt.train_metrics"),
    ("lbt.config", "lbt.results", "lbt.critical_batch"),
    ("lbt.data", "lbt.step", "lbt.checkpoint", "lbt.metrics", "lbt.lease", "lbt.logs",
     "lbt.plots"),
    ("lbt.files", "lbt.batch_schedule", "lbt.adversarial", "lbt.optim", "lbt.models"),
    ("lbt", "lbt.errors", "lbt.registry", "lbt.diagnostics", "lbt.parallel", "lbt.remote",
     "lbt.search", "lbt.preemption"),
)
PACKAGES = ("lbt.optim", "lbt.models", "lbt.data")
FLOOR = {module: len(FLOORS) - i for i, floor in enumerate(FLOORS) for module in floor}


def unit(module: str) -> str:
  for package in PACKAGES:
    if module == package or module.startswith(package + "."):
      return package
  return module


def module_name(path: str) -> str:
  relative = os.path.relpath(path, os.path.dirname(LBT))[:-3].replace(os.sep, ".")
  return relative[:-len(".__init__")] if relative.endswith(".__init__") else relative


def imported(path: str):
  """Every lbt module `path` imports, at any depth of its code."""
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.split(".")[0] == "lbt")
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
        node.module.split(".")[0] == "lbt"):
      for alias in node.names:  # `from lbt import study` imports lbt.study.
        candidate = f"{node.module}.{alias.name}"
        as_path = os.path.join(os.path.dirname(LBT), *candidate.split("."))
        is_module = os.path.exists(as_path + ".py") or os.path.isdir(as_path)
        yield candidate if is_module else node.module


def edges():
  for root, _, names in os.walk(LBT):
    for name in sorted(n for n in names if n.endswith(".py")):
      path = os.path.join(root, name)
      source = unit(module_name(path))
      for target in {unit(m) for m in imported(path)} - {source}:
        yield source, target, path


def test_every_module_has_a_floor():
  modules = {unit(module_name(os.path.join(root, n)))
             for root, _, names in os.walk(LBT) for n in names if n.endswith(".py")}
  assert sorted(modules - set(FLOOR)) == []


def test_every_import_goes_down():
  upward = [f"{source} imports {target} ({os.path.relpath(path, LBT)})"
            for source, target, path in edges()
            if FLOOR.get(target, 0) >= FLOOR.get(source, 0)]
  assert upward == []


@pytest.mark.parametrize("source,target", [("lbt.config", "lbt.train"),
                                           ("lbt.remote", "lbt.files")])
def test_the_checker_sees_an_upward_import_inside_a_function(tmp_path, source, target):
  """An import hidden in a function body counts (what closed the old circles)."""
  path = tmp_path / "module.py"
  path.write_text(f"def f():\n  from lbt import {target.split('.')[1]}\n")
  found = {unit(m) for m in imported(str(path))}
  assert target in found and FLOOR[target] >= FLOOR[source]
