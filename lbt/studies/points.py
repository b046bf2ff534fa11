"""What each point of a study is for: its role, declared as data, never read from its name.

A study file returns {name: Point(config, role)} or {name: config}. The name is
a label (a directory name a person reads); the role says what the point is for,
as plain JSON the runner writes into the point's workdir (`lbt.io.layout.ROLE`)
before it trains and the report reads back:

  {"section": one of SECTIONS,
   "cell": the thing a table compares (every trial of one tuned cell shares it),
   "optimizer": its config's optimizer.name, "batch": its config's batch_size,
   "learning_rate": a trial of a tuned cell: its base LR (optional; required
                    in a limit trial),
   "rule": a reference point run at a learning-rate rule's LR, not tuned
           (optional; e.g. "linear"),
   per section: "rung" (int) and "change" (the ingredient, e.g. "lars") in a
   ladder, "variant" (HOFFER_VARIANTS) in hoffer, "schedule" (SCHEDULES) in a
   schedule point, "of" (a cell) and "seed" (int) in a seed's rerun of the
   chosen learning rate of a searched cell}

A plain config, under any name, is a point of section "plain" (`plain_role`):
a cell of its own, named as the point, that the report shows as itself and
no table groups with others.

Adding a kind of point is adding a section here and a reader of it in the
report; no grammar of names spreads over the modules. `role_from_name` is the
one reader of the old names (`<optimizer>-b<batch>[-variant][-lr<x>]`), kept
only to migrate old study directories (point workdirs without role.json).
"""

import json
import math
import os
import re
from typing import Dict, Mapping, NamedTuple, Optional

import ml_collections

from lbt.engine import config as config_lib
from lbt.errors import ConfigError
from lbt.io import files, layout

SECTIONS = ("sweep", "ladder", "hoffer", "noise", "schedule", "limit", "seed", "full_batch",
            "plain")
HOFFER_VARIANTS = ("sqrt", "sqrt-gbn", "regime")
SCHEDULES = ("constant", "steps", "noise")
COMMON = ("section", "cell", "optimizer", "batch")
# The fields each section requires beyond COMMON.
SECTION_FIELDS = {"sweep": (), "ladder": ("rung", "change"), "hoffer": ("variant",),
                  "noise": (), "schedule": ("schedule",), "limit": ("learning_rate",),
                  "seed": ("of", "seed", "learning_rate"),
                  # A cell of the full-batch study (lbt.studies.full_batch):
                  # the full batch, or the small-batch reference.
                  "full_batch": (),
                  # A study file's plain config: a point of its own (`plain_role`).
                  "plain": ()}
# Fields any role may carry: a tuned trial's base LR; the learning-rate rule a
# reference point follows instead of being tuned (shown beside the tuned cell);
# the seed of a search's trial that runs its rate with several seeds.
OPTIONAL_FIELDS = ("learning_rate", "rule", "seed")
LR_RTOL = 1e-5  # an old name's learning rate has 6 significant digits (`:g`)

_text = lambda v: isinstance(v, str) and bool(v)
_count = lambda v: isinstance(v, int) and not isinstance(v, bool)
_CHECKS = {
    "section": (lambda v: v in SECTIONS, f"one of {', '.join(SECTIONS)}"),
    "cell": (_text, "a non-empty string: the table cell the point serves"),
    "optimizer": (_text, "a non-empty string: its config's optimizer.name"),
    "batch": (lambda v: _count(v) and v > 0, "an int > 0: its config's batch_size"),
    "rung": (lambda v: _count(v) and v >= 0, "an int >= 0: the ladder's step"),
    "change": (_text, "a non-empty string: the ingredient this rung adds"),
    "of": (_text, "the cell whose chosen learning rate a seed reruns"),
    "seed": (lambda v: _count(v) and v >= 0, "an int >= 0: the config's seed"),
    "rule": (_text, "a non-empty string: the learning-rate rule this point follows"),
    "variant": (lambda v: v in HOFFER_VARIANTS, f"one of {', '.join(HOFFER_VARIANTS)}"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "learning_rate": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v) and v > 0,
                      "a positive number: the base LR of this trial of a tuned cell"),
}


class Point(NamedTuple):
  """One point of a study: what it trains and what it is for; with a
  `search` (`lbt.studies.cell_search.Search`), a cell whose learning rate is
  searched: its config's learning rate is only the first guess, and its
  trials are the points `<name>-lr<x>`."""
  config: ml_collections.ConfigDict
  role: dict
  search: Optional[object] = None


def check_role(name: str, role) -> None:
  """Raises ConfigError naming the point, the field and what is allowed."""
  where = f"point {name}: role"
  if not isinstance(role, Mapping):
    raise ConfigError(where, role, f"a dict with the fields {', '.join(COMMON)} "
                      "(lbt.studies.points)")
  section = role.get("section")
  if section not in SECTIONS:
    raise ConfigError(f"{where}.section", section, _CHECKS["section"][1])
  allowed = COMMON + SECTION_FIELDS[section] + OPTIONAL_FIELDS
  for key in role:
    if key not in allowed:
      raise ConfigError(f"{where}.{key}", role[key],
                        f"no such field in a {section} role; its fields: {', '.join(allowed)}")
  for key in COMMON + SECTION_FIELDS[section]:
    if key not in role:
      raise ConfigError(f"{where}.{key}", None,
                        f"required in a {section} role: {_CHECKS[key][1]}")
  for key, value in role.items():
    valid, allowed_text = _CHECKS[key]
    if not valid(value):
      raise ConfigError(f"{where}.{key}", value, allowed_text)


def make_role(section: str, *, cell: str, optimizer: str, batch: int, **fields) -> dict:
  """A checked role (see the module docstring for the fields)."""
  value = {"section": section, "cell": cell, "optimizer": optimizer, "batch": batch,
           **fields}
  check_role(cell, value)
  return value


def point(config: ml_collections.ConfigDict, section: str, *, cell: str,
          search=None, **fields) -> Point:
  """A point whose role takes its optimizer and batch from its config, so
  that the two cannot disagree (with `search`, a searched cell)."""
  return Point(config, make_role(section, cell=cell, optimizer=config.optimizer.name,
                                 batch=config.batch_size, **fields), search)


def check_agrees(name: str, config, role: dict) -> None:
  """A role describes its config: the same optimizer, batch and base LR."""
  facts = {"optimizer": ("optimizer.name", config.optimizer.name),
           "batch": ("batch_size", config.batch_size),
           "learning_rate": ("optimizer.learning_rate", config.optimizer.learning_rate)}
  for key, (field, value) in facts.items():
    if key not in role:
      continue
    same = (math.isclose(role[key], value, rel_tol=LR_RTOL) if key == "learning_rate"
            else role[key] == value)
    if not same:
      raise ConfigError(f"point {name}: role.{key}", role[key],
                        f"its config's {field}, {value!r}")


def plain_role(name: str, config: ml_collections.ConfigDict) -> dict:
  """The role of a study file's plain config: a point of its own, whatever
  its name, its cell the point's name."""
  optimizer = config.get("optimizer")
  return make_role("plain", cell=name, batch=config.get("batch_size"), optimizer=(
      optimizer.get("name") if isinstance(optimizer, ml_collections.ConfigDict) else None))


def as_point(name: str, value) -> Point:
  """A study file's value as a Point: a Point's role is checked; a plain
  ConfigDict is a plain point (`plain_role`), whatever its name."""
  if isinstance(value, Point) and isinstance(value.config, ml_collections.ConfigDict):
    check_role(name, value.role)
    return Point(value.config, dict(value.role), value.search)
  if isinstance(value, ml_collections.ConfigDict):
    return Point(value, plain_role(name, value))
  raise ConfigError(f"point {name}", type(value).__name__,
                    "lbt.studies.points.Point(config, role), or an ml_collections."
                    "ConfigDict (a plain point)")


def study_points(study: Mapping[str, object]) -> Dict[str, Point]:
  """Every value of a study file as a Point, each role checked against its
  config, and the points of one cell checked to agree."""
  found = {name: as_point(name, value) for name, value in study.items()}
  for name, found_point in found.items():
    check_agrees(name, found_point.config, found_point.role)
  check_cells({name: p.role for name, p in found.items()})
  return found


def check_cells(roles: Mapping[str, dict]) -> None:
  """The points of one cell are the trials of one tuned cell: the same role
  but for their learning rates (and seeds), which all carry and no two share."""
  cells: Dict[str, list] = {}
  for name, role in roles.items():
    cells.setdefault(role["cell"], []).append((name, role))
  for cell, members in cells.items():
    if len(members) < 2:
      continue
    first_name, first = members[0]
    rates = []
    for name, role in members:
      rate, seed = role.get("learning_rate"), role.get("seed")
      if (_but_rate(role) != _but_rate(first) or rate is None
          or any(math.isclose(rate, r, rel_tol=LR_RTOL) and seed == s for r, s in rates)):
        raise ConfigError(f"point {name}: role", role,
                          f"the role of {first_name}, a point of the same cell {cell!r}, "
                          "with a learning_rate (and seed) of its own (the points of one "
                          "cell are the trials of its learning rate)")
      rates.append((rate, seed))


def _but_rate(role: dict) -> dict:
  return {k: v for k, v in role.items() if k not in ("learning_rate", "seed")}


# ---- role.json ----

def write_role(point_dir: str, role: dict) -> Optional[dict]:
  """Writes the point's role.json (whole, atomically) unless it already holds
  `role`; returns the role it replaced, if any."""
  path = os.path.join(point_dir, layout.ROLE)
  old = _read(path)
  if old == role:
    return None
  files.makedirs(point_dir)
  files.write_text_atomic(path, json.dumps(role, indent=2, sort_keys=True))
  return old


def read_role(point_dir: str, name: str) -> dict:
  """The point's role.json; for a workdir without one (made before roles
  existed), the role its name says, read in memory: reading never writes (the
  runner writes a study's roles before its points train, `write_role`)."""
  found = _read(os.path.join(point_dir, layout.ROLE))
  if found is None:
    found = role_from_name(name)
  check_role(name, found)
  return found


def _read(path: str) -> Optional[dict]:
  try:
    text = files.read_text(path)
    return None if text is None else json.loads(text)
  except ValueError as e:
    raise ConfigError(path, "(damaged)", f"a point's role as JSON ({e}); fix the file, "
                      "or remove it to have the role read from the point's name") from None


# ---- migration: the old names ----

_LR = re.compile(r"(?P<cell>.+)-lr(?P<lr>[0-9.]+(?:e[+-]?[0-9]+)?)")
_OLD = re.compile(r"(?P<optimizer>[^-]+)-b(?P<batch>[0-9]+)(?:-(?P<variant>.+))?")
OLD_NAMES = ("<optimizer>-b<batch>[-variant][-lr<x>], the variant one of tuned, "
             "recipe<k>, sqrt, sqrt-gbn, regime, noise, batch-<schedule>, target")
_NO_ROLE = (f"a point workdir with its {layout.ROLE} (rerun its study to write it), or a "
            f"workdir of an old study directory named {OLD_NAMES}")


def role_from_name(name: str) -> dict:
  """The role an old point name says: the one reader of the names lbt gave
  its points before roles were data, for the workdirs of old study
  directories (a point workdir without role.json)."""
  with_lr = _LR.fullmatch(name)
  cell = with_lr["cell"] if with_lr else name
  old = _OLD.fullmatch(cell)
  if not old:
    raise ConfigError(f"point {name}", name, _NO_ROLE)
  common = {"cell": cell, "optimizer": old["optimizer"], "batch": int(old["batch"])}
  if with_lr:
    common["learning_rate"] = float(with_lr["lr"])
  variant = old["variant"] or ""
  rung = re.fullmatch(r"recipe([0-9]+)", variant)
  if variant in ("", "tuned"):
    found = {"section": "sweep", **common}
  elif rung:
    found = {"section": "ladder", **common, "rung": int(rung[1]),
             "change": "baseline" if int(rung[1]) == 0 else "unknown"}
  elif variant in HOFFER_VARIANTS:
    found = {"section": "hoffer", **common, "variant": variant}
  elif variant == "noise":
    found = {"section": "noise", **common}
  elif variant.startswith("batch-") and variant[len("batch-"):] in SCHEDULES:
    found = {"section": "schedule", **common, "schedule": variant[len("batch-"):]}
  elif variant == "target" and with_lr:
    found = {"section": "limit", **common, "cell": f"b{common['batch']}"}
  else:
    raise ConfigError(f"point {name}", name, _NO_ROLE)
  check_role(name, found)
  return found


def check_searches(points: Mapping[str, Point]) -> None:
  """A searched cell has a validation split (it chooses) and an anchor that
  is a searched cell of the study."""
  searched = {n for n, p in points.items() if p.search is not None}
  for name in sorted(searched):
    point = points[name]
    if not config_lib.dataset_field(point.config, "validation_examples"):
      raise ConfigError(f"point {name}: dataset.validation_examples", 0,
                        "> 0 for a searched cell (the validation split chooses)")
    anchor = getattr(point.search, "anchor", None)
    if anchor is not None and anchor not in searched:
      raise ConfigError(f"point {name}: search.anchor", anchor,
                        f"a searched cell of the study: {', '.join(sorted(searched))}")
