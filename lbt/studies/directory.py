"""A study directory before anything trains: which points a command selects,
every point validated, the directory claimed for one study, roles written.

A study directory belongs to one study: study.json names the study file (and
its argument) that created it, the order of its points and its target; another
study file is refused before anything trains. Point names may not collide with
the directory's own files (`lbt.io.layout.RESERVED`). Each point runs in
`DIR/<point>/`, an ordinary run workdir (`lbt.main` on it resumes it too) that
also holds its role.json, written before it trains.
"""

import fnmatch
import json
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from lbt.engine import config as config_lib
from lbt.engine import workdir as workdir_lib
from lbt.errors import ConfigError
from lbt.io import files, layout
from lbt.studies import points as points_lib
from lbt.studies import results
from lbt.studies.results import DIVERGED, FAILED, FINISHED, PENDING, RUNNING

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def parse_shard(text: str) -> Tuple[int, int]:
  """"I/N" -> (I, N) with 0 <= I < N."""
  match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
  if not match or not int(match[1]) < int(match[2]):
    raise ConfigError("--shard", text, "I/N with 0 <= I < N, e.g. 0/2")
  return int(match[1]), int(match[2])


def select_points(names: Sequence[str], only: Sequence[str] = ()) -> List[str]:
  """The points a command runs: those matching a glob of `only` (all when
  empty), in the study's order."""
  for pattern in only:
    if not fnmatch.filter(names, pattern):
      raise ConfigError("--only", pattern, f"a glob matching a point of the study: "
                        f"{', '.join(names)}")
  return [n for n in names if not only or any(fnmatch.fnmatch(n, p) for p in only)]


def write_json(path: str, value) -> None:
  """Atomic: a killed runner leaves the old file or the new one, never half."""
  files.write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True))


def agreed_status(point_dir: str) -> str:
  """Process 0's `point_status`, on every process: all must skip or run a
  point together, and only process 0 is sure to see the metrics it wrote."""
  status = results.point_status(point_dir) if jax.process_index() == 0 else PENDING
  if jax.process_count() == 1:
    return status
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  order = (FINISHED, DIVERGED, FAILED, RUNNING, PENDING)
  code = multihost_utils.broadcast_one_to_all(np.int32(order.index(status)))
  return order[int(code)]


def validate_points(points: Mapping[str, object], workdir: str,
                    num_devices: int = 0) -> Dict[str, config_lib.RunFacts]:
  """Every point, before any runs: names, configs, roles (`lbt.studies.points`:
  a Point, or a plain config) and existing workdirs, for `num_devices`
  (default: all) per point; returns each point's facts, which its run then
  uses (validated once)."""
  if not points:
    raise ConfigError("--study", "{}", "a study with at least one point")
  facts, roles = {}, {}
  for name, value in points.items():
    if not isinstance(name, str) or not NAME.match(name):
      raise ConfigError("point name", name, "letters, digits and . _ + - (a directory name)")
    if name in layout.RESERVED or name.startswith(tuple(f"{r}." for r in layout.RESERVED)):
      raise ConfigError("point name", name, "a name other than the study directory's own "
                        f"files and directories ({', '.join(layout.RESERVED)})")
    config, roles[name], _ = points_lib.as_point(name, value)
    try:
      facts[name] = config_lib.validate(config, num_devices=num_devices or jax.device_count())
      workdir_lib.check_config(config, os.path.join(workdir, name), (), allow_flag="")
      workdir_lib.check_facts(facts[name], os.path.join(workdir, name))
    except ConfigError as e:
      raise ConfigError(f"point {name}: {e.field}", e.value, e.allowed) from None
    points_lib.check_agrees(name, config, roles[name])
  points_lib.check_cells(roles)
  points_lib.check_searches(points_lib.study_points(points))
  return facts


def write_roles(workdir: str, points: Mapping[str, points_lib.Point], program: str) -> None:
  """Writes each point's role.json before it trains. The study file owns a
  point's role: a changed one (a cell renamed, or the role an old directory's
  migration read from the name) is rewritten, not refused, because a role
  labels a result and never changes what trains; a changed config, which
  does, is refused (`validate_points`)."""
  for name, point in points.items():
    old = points_lib.write_role(os.path.join(workdir, name), point.role)
    if old is not None:
      print(f"{program}: point {name}: role {json.dumps(old, sort_keys=True)} rewritten as "
            f"{json.dumps(point.role, sort_keys=True)} (the study file's)", flush=True)


def claim_directory(workdir: str, study_id: Optional[str], names: Sequence[str],
                    target_accuracy: Optional[float], study_target: Optional[float]) -> None:
  """Writes study.json (study, point order, target), refusing a directory
  that another study created (exit 2, before anything trains)."""
  files.makedirs(workdir)
  info = results.study_info(workdir)
  owner = info.get("study")
  if study_id and owner and owner != study_id:
    raise ConfigError("--workdir", workdir, f"a directory of this study; it holds the "
                      f"study {owner} (its study.json): use another --workdir")
  target = results.resolve_target(target_accuracy, study_target,
                                  info.get("target_accuracy"))
  order = list(names) + [n for n in info.get("points", []) if n not in names]
  old = {"study": owner, "points": info.get("points"), "target_accuracy":
         info.get("target_accuracy")}
  new = {"study": study_id or owner, "points": order, "target_accuracy": target}
  if new != old:
    write_json(os.path.join(workdir, layout.STUDY), new)


def cache_directory(workdir: str, flag: str = "") -> Optional[str]:
  """The compilation cache's directory for --compilation_cache=`flag`."""
  if flag == "none":
    return None
  if flag:
    return flag
  if files.is_remote(workdir):  # JAX's cache reads and writes local files fastest.
    return os.path.expanduser(os.path.join("~", ".cache", "lbt", layout.COMPILATION_CACHE))
  return os.path.join(workdir, layout.COMPILATION_CACHE)


def device_groups(per_point: int) -> List[list]:
  """This host's devices in groups of `per_point`, one group per point
  running at once; [] for 0 (one point at a time on every device)."""
  if isinstance(per_point, bool) or not isinstance(per_point, int) or per_point < 0:
    raise ConfigError("--devices_per_point", per_point, "an int >= 0")
  if not per_point:
    return []
  if jax.process_count() > 1:
    raise ConfigError("--devices_per_point", per_point, "0 on a multi-process run: hosts "
                      "split a study with --shard=I/N, one lbt.study per host")
  devices = jax.local_devices()
  if len(devices) % per_point:
    raise ConfigError("--devices_per_point", per_point, f"0 or a divisor of this host's "
                      f"{len(devices)} devices")
  return [devices[i:i + per_point] for i in range(0, len(devices), per_point)]
