"""The named moments of lbt.io.faults: each one the code marks is listed, each
listed one is marked, and a bad LBT_FAULT is one line, not a kill that never
comes. The kills themselves: tests/studies/test_study_faults.py, tests/studies/test_limit.py."""

import ast
import os
import re

import pytest

from lbt.errors import ConfigError
from lbt.io import faults
import kill_sweep

LBT = os.path.join(kill_sweep.REPO, "lbt")


def marked_moments():
  """name -> the files that call faults.moment(name)."""
  found = {}
  for root, _, names in os.walk(LBT):
    for name in (n for n in names if n.endswith(".py")):
      path = os.path.join(root, name)
      for node in ast.walk(ast.parse(open(path).read())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "moment" and getattr(node.func.value, "id", "") == "faults"):
          for value in ast.walk(node.args[0]):
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
              found.setdefault(value.value, []).append(os.path.relpath(path, LBT))
  return found


def test_every_listed_moment_is_marked_in_the_code_and_no_other():
  marked = marked_moments()
  assert sorted(marked) == sorted(faults.MOMENTS)
  # The study's report and the limit's share "report"; every other moment lies in one place.
  shared = {n: sorted(f) for n, f in marked.items() if len(f) > 1}
  assert shared == {"report": ["reports/limit_report.py", "reports/study_report.py"]}


@pytest.mark.parametrize("spec", ["nowhere:1", "update", "update:0", "update:two",
                                  "update:1:HUP", "update:1:KILL:again"])
def test_a_bad_spec_names_lbt_fault_and_what_is_allowed(spec):
  with pytest.raises(ConfigError, match=re.escape(f"LBT_FAULT={spec!r} is invalid")):
    faults.parse(spec)


def test_a_bad_lbt_fault_stops_a_command_with_one_line_before_anything_runs(tmp_path):
  result = kill_sweep.run(kill_sweep.python("lbt.main", "--config=configs/fashion_mnist.py",
                                            f"--workdir={tmp_path / 'run'}"), "checkpoint:2:HUP")
  assert result.returncode == 2 and result.stderr.startswith("lbt: error: LBT_FAULT="), (
      result.stderr[-2000:])
  assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "run").exists()
