"""The import layering of lbt is a contract, read from the tree: commands on
top, then the report, the study library, the training engine, its data,
models and optimizers, the workdir and fault layer, and the pure ground floor.
Each layer imports only layers below it (imports inside functions included);
the modules inside one package may import one another but never in a circle.
A new module or package must be given a floor here."""

import ast
import os

import pytest

LBT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lbt")

# Top to bottom. A sub-package is one unit of its floor.
FLOORS = (
    ("lbt.main", "lbt.study", "lbt.report", "lbt.limit"),  # commands: none imports another
    ("lbt.reports",),                      # report.md, limit.md, their plots
    ("lbt.studies",),                      # points, runner, results, searches, the protocol
    ("lbt.engine",),                       # config, batch plan, step, programs, loop, checkpoint
    ("lbt.data", "lbt.models", "lbt.optim"),
    ("lbt.io",),                           # files, object stores, lease, logs, records, cli
    ("lbt", "lbt.errors", "lbt.registry", "lbt.stats"),  # pure: numpy statistics, errors
)
PACKAGES = ("lbt.reports", "lbt.studies", "lbt.engine", "lbt.data", "lbt.models", "lbt.optim",
            "lbt.io", "lbt.stats")
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


@pytest.mark.parametrize("source,target", [("lbt.engine", "lbt.studies"),
                                           ("lbt.io", "lbt.engine")])
def test_the_checker_sees_an_upward_import_inside_a_function(tmp_path, source, target):
  """An import hidden in a function body counts (what closed the old circles)."""
  path = tmp_path / "module.py"
  path.write_text(f"def f():\n  from {target} import something\n")
  found = {unit(m) for m in imported(str(path))}
  assert target in found and FLOOR[target] >= FLOOR[source]


def test_no_circle_inside_a_package():
  graph = {}
  for root, _, names in os.walk(LBT):
    for name in (n for n in names if n.endswith(".py")):
      path = os.path.join(root, name)
      source = module_name(path)
      graph.setdefault(source, set()).update(
          m for m in imported(path) if unit(m) == unit(source) and m != source)
  done, circles = set(), []

  def visit(node, trail):
    if node in trail:
      circles.append(" -> ".join(trail[trail.index(node):] + [node]))
      return
    if node in done:
      return
    for target in sorted(graph.get(node, ())):
      visit(target, trail + [node])
    done.add(node)

  for node in sorted(graph):
    visit(node, [])
  assert circles == []


@pytest.mark.parametrize("package", ("lbt",) + PACKAGES)
def test_every_package_says_what_it_is_for_and_what_it_may_import(package):
  path = os.path.join(os.path.dirname(LBT), *package.split("."), "__init__.py")
  doc = ast.get_docstring(ast.parse(open(path).read())) or ""
  assert len(doc.split()) >= 20, f"{package}: a docstring saying what the package is for"
  assert package == "lbt" or "May import" in doc, f"{package}: what it may import"


def test_no_two_classes_share_a_name():
  """One name per thing: a class name says which class, wherever it is read."""
  where = {}
  for root, _, names in os.walk(LBT):
    for name in (n for n in names if n.endswith(".py")):
      path = os.path.join(root, name)
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ClassDef):
          where.setdefault(node.name, []).append(os.path.relpath(path, LBT))
  assert {n: paths for n, paths in where.items() if len(paths) > 1} == {}
