"""The command that runs a study file: every point in its own workdir, then the report.

  python -m lbt.study --study=configs/studies/fashion_mnist.py --workdir=DIR \
      [--only=GLOB,...] [--shard=I/N] [--target_accuracy=X] \
      [--devices_per_point=D] [--compilation_cache=DIR|none]

How points are validated, claimed, run side by side and recorded:
`lbt.studies.runner`; the report: `lbt.reports.study_report`.
"""

import os
import sys
from typing import Dict, Mapping, Sequence

import jax
import ml_collections

from lbt.errors import ConfigError
from lbt.io import cli, files
from lbt.reports import study_report
from lbt.studies import runner
from lbt.studies.results import FAILED
from lbt.studies.runner import parse_shard


def run_study(points: Mapping[str, ml_collections.ConfigDict], workdir: str,
              **options) -> Dict[str, str]:
  """Runs a study's selected points (`lbt.studies.runner.run_points`, which
  takes the same options) and rebuilds its report; point name -> status."""
  statuses = runner.run_points(points, workdir, **options)
  if statuses is not None and jax.process_index() == 0:
    print(f"lbt.study: report {study_report.build_report(workdir)}", flush=True)
  return statuses or {}


def _flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  values = flags.FlagValues()
  flags.DEFINE_string("study", None, "A study file, with its argument after ':', e.g. "
                      "configs/studies/fashion_mnist.py:quick.", flag_values=values)
  flags.DEFINE_string("workdir", None, "The study's directory: one workdir per point, "
                      "results.sqlite and report/. Rerun to resume.", flag_values=values)
  flags.DEFINE_list("only", [], "Globs of point names to run, e.g. 'lars-*,adam-b128'.",
                    flag_values=values)
  flags.DEFINE_string("shard", "0/1", "I/N: run every N-th point starting at the I-th, "
                      "so that N hosts split the study.", flag_values=values)
  flags.DEFINE_string("compilation_cache", "", "JAX's persistent compilation cache: a "
                      "directory, 'none', or empty for the study directory's "
                      "compilation_cache/ (~/.cache/lbt/compilation_cache for gs://).",
                      flag_values=values)
  flags.DEFINE_integer("devices_per_point", 0, "Run points side by side, each on its "
                       "own this many devices of this host (0: one point at a time on "
                       "every device).", flag_values=values)
  flags.DEFINE_float("target_accuracy", None, "Test accuracy of the updates-to-target "
                     "columns (default: the study file's TARGET_ACCURACY, else the "
                     "benchmark's).", flag_values=values)
  return values


def main(argv: Sequence[str]) -> int:
  """The command line; returns the exit status (2 bad input, 1 a failed point)."""
  values = _flags()
  outcome = {}

  def command():
    cli.parse_flags(values, argv, program="lbt.study")
    if not values.study:
      raise ConfigError("--study", None, "a study file such as "
                        "configs/studies/fashion_mnist.py or ...fashion_mnist.py:quick")
    if not values.workdir:
      raise ConfigError("--workdir", None, "a directory for the study")
    if (not files.is_remote(values.workdir) and os.path.exists(values.workdir)
        and not os.path.isdir(values.workdir)):
      raise ConfigError("--workdir", values.workdir, "a directory, not a file")
    shard = parse_shard(values.shard)
    points, constants = cli.load_python_file(values.study, flag="--study",
                                             function="get_study",
                                             constants=("TARGET_ACCURACY",))
    if not isinstance(points, Mapping):
      raise ConfigError("--study", values.study, "a file whose get_study(arg) returns a "
                        f"dict of point name -> ConfigDict (got {type(points).__name__})")
    for field, target in (("--target_accuracy", values.target_accuracy),
                          ("TARGET_ACCURACY", constants["TARGET_ACCURACY"])):
      if target is not None and (isinstance(target, bool) or not isinstance(target, float)
                                 or not 0 < target <= 1):
        raise ConfigError(field, target, "a test accuracy in (0, 1]")
    outcome.update(run_study(points, values.workdir, only=values.only, shard=shard,
                             target_accuracy=values.target_accuracy,
                             study_target=constants["TARGET_ACCURACY"],
                             study_id=cli.file_id(values.study),
                             compilation_cache=values.compilation_cache,
                             devices_per_point=values.devices_per_point))

  cli.exit_on_signals()
  status = cli.run(command)
  failed = [n for n, s in outcome.items() if s == FAILED]
  if status == 0 and failed:
    print(f"lbt.study: {len(failed)} point(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return status


if __name__ == "__main__":
  cli.keep_freed_host_memory()
  sys.exit(main(sys.argv))
