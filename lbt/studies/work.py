"""A study's work from its file to its last written file, for the commands:
`run_study` (lbt.study: plain points, searched cells, the steps-to-target
protocols a study file declares, the full-batch summary) and `run_limits`
(lbt.limit: one protocol, or several side by side), each through the one
runner (`lbt.studies.runner`)."""

import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

import jax

from lbt.engine import programs
from lbt.io import files, layout
from lbt.studies import directory, full_batch, limit_protocol, planners, runner
from lbt.studies import points as points_lib


def run_study(points: Mapping[str, object], workdir: str, *,
              limits: Optional[Mapping[str, limit_protocol.Protocol]] = None,
              only: Sequence[str] = (), shard: Tuple[int, int] = (0, 1),
              target_accuracy: Optional[float] = None,
              study_target: Optional[float] = None, study_id: Optional[str] = None,
              compilation_cache: str = "", devices_per_point: int = 0) -> runner.Outcome:
  """Runs a study file's selected points and its protocols (`limits`: label ->
  protocol, each into DIR/limits/<label>/) to their end, resuming.

  Every point is validated and the directory claimed (study.json: the study
  file, its point order, the target) before anything trains.

  Args:
    points: the study, point name -> `lbt.studies.points.Point` or a plain
      run config, in order.
    workdir: the study's directory.
    only: globs of point names to run (all when empty; protocols always run).
    shard: (I, N): this command runs the trials `runner.owner` gives shard I.
    target_accuracy: --target_accuracy; study_target: the study file's
      TARGET_ACCURACY (precedence: `lbt.studies.results.resolve_target`).
    study_id: the study file and argument; a directory created by another
      study is refused.
    compilation_cache: JAX's persistent compilation cache: "" the study
      directory's (a local one; else ~/.cache/lbt), "none" none, or a path.
    devices_per_point: 0: one trial at a time on every device; d: trials side
      by side, each on its own d devices of this host (a single-process run).
  """
  files.check_location(workdir, "--workdir")
  groups = directory.device_groups(devices_per_point)
  facts = directory.validate_points(points, workdir, devices_per_point)
  study = points_lib.study_points(points)
  if jax.process_index() == 0:
    directory.claim_directory(workdir, study_id, list(study), target_accuracy, study_target)
  selected = {n: study[n] for n in directory.select_points(list(study), only)}
  if jax.process_index() == 0:  # The study file owns its points' roles (old directories too).
    directory.write_roles(workdir, {n: p for n, p in selected.items() if p.search is None},
                          "lbt.study")
  work = planners.study_planners(selected, workdir, facts)
  work += [limit_protocol.LimitPlanner(p, os.path.join(workdir, layout.LIMITS, label),
                                       f"{study_id} {label}")
           for label, p in (limits or {}).items()]
  if any(p.role["section"] == full_batch.SECTION for p in study.values()):
    work.append(full_batch.FullBatchSummary(workdir))
  with programs.compilation_cache(directory.cache_directory(workdir, compilation_cache)):
    return runner.run(work, workdir, shard=shard, groups=groups, program="lbt.study")


def run_limits(protocols: Mapping[str, limit_protocol.Protocol], workdir: str, *,
               shard: Tuple[int, int] = (0, 1), study_ids: Mapping[str, str] = None
               ) -> Tuple[runner.Outcome, Dict[str, Optional[dict]]]:
  """Runs steps-to-target protocols to their end, each in its own directory
  (label "": `workdir` itself, else workdir/<label>); returns what the
  runner did and each protocol's limit.json (None where not done)."""
  files.check_location(workdir, "--workdir")
  work = {label: limit_protocol.LimitPlanner(
      protocol, os.path.join(workdir, label) if label else workdir,
      (study_ids or {}).get(label)) for label, protocol in protocols.items()}
  outcome = runner.run(list(work.values()), workdir, shard=shard, program="lbt.limit")
  summaries = {label: planner.summary or limit_protocol.read_summary(planner.directory)
               for label, planner in work.items()}
  return outcome, summaries
