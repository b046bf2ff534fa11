"""The command that runs a study file: every point in its own workdir, then the report.

  python -m lbt.study --study=configs/studies/fashion_mnist.py --workdir=DIR \
      [--only=GLOB,...] [--shard=I/N] [--target_accuracy=X] \
      [--devices_per_point=D] [--compilation_cache=DIR|none] [--include=DIR,...] \
      [--noreport]

A study's plain points, the trials of its searched cells and the
steps-to-target protocols its file declares with `get_limits(arg)` (each into
DIR/limits/<label>/) all run through the one runner, wave by wave, resumable
and split by --shard (`lbt.studies.work.run_study`); then the report
(`lbt.reports.study_report`), which may include other study directories
(--include, e.g. a full-batch study's).
"""

import os
import sys
from typing import Dict, Mapping, Sequence

import jax

from lbt.errors import ConfigError
from lbt.io import cli, files, layout
from lbt.reports import study_report
from lbt.studies import limit_protocol, work
from lbt.studies.directory import parse_shard


def study_limits(spec: str, get_limits) -> Dict[str, limit_protocol.Protocol]:
  """The steps-to-target protocols a study file declares (`get_limits(arg)`,
  optional): label -> protocol."""
  if get_limits is None:
    return {}
  _, has_arg, arg = spec.partition(":")
  try:
    limits = get_limits(arg) if has_arg else get_limits()
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError("--study", spec, f"a file whose get_limits() runs ({type(e).__name__}: "
                      f"{cli.one_line(e)})") from None
  if not isinstance(limits, Mapping) or not all(
      isinstance(p, limit_protocol.Protocol) for p in limits.values()):
    raise ConfigError("--study", spec, "a file whose get_limits(arg) returns a dict of "
                      "label -> lbt.studies.limit_protocol.Protocol")
  return dict(limits)


def _flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  values = flags.FlagValues()
  flags.DEFINE_string("study", None, "A study file, with its argument after ':', e.g. "
                      "configs/studies/fashion_mnist.py:quick.", flag_values=values)
  flags.DEFINE_string("workdir", None, "The study's directory: one workdir per point, "
                      "results.sqlite and report/. Rerun to resume.", flag_values=values)
  flags.DEFINE_list("only", [], "Globs of point names to run, e.g. 'lars-*,adam-b128'.",
                    flag_values=values)
  flags.DEFINE_string("shard", "0/1", "I/N: run the trials that fall to shard I of N "
                      "(by their names), so that N hosts split the study.", flag_values=values)
  flags.DEFINE_string("compilation_cache", "", "JAX's persistent compilation cache: a "
                      "directory, 'none', or empty for the study directory's "
                      "compilation_cache/ (~/.cache/lbt/compilation_cache for gs://).",
                      flag_values=values)
  flags.DEFINE_integer("devices_per_point", 0, "Run points side by side, each on its "
                       "own this many devices of this host (0: one point at a time on "
                       "every device).", flag_values=values)
  flags.DEFINE_list("include", [], "Other study directories whose answers the report "
                    "shows beside this study's (e.g. a full-batch study's).",
                    flag_values=values)
  flags.DEFINE_float("target_accuracy", None, "Test accuracy of the updates-to-target "
                     "columns (default: the study file's TARGET_ACCURACY, else the "
                     "benchmark's).", flag_values=values)
  flags.DEFINE_bool("report", True, "Write the report when the work ends (false for the "
                    "other shards of one machine, whose shard 0 writes it).",
                    flag_values=values)
  return values


def main(argv: Sequence[str]) -> int:
  """The command line; returns the exit status (2 bad input, 1 a failed trial)."""
  values = _flags()
  outcome = []

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
                                             constants=("TARGET_ACCURACY", "get_limits"))
    if not isinstance(points, Mapping):
      raise ConfigError("--study", values.study, "a file whose get_study(arg) returns a "
                        "dict of point name -> lbt.studies.points.Point or run config (got "
                        f"{type(points).__name__})")
    for field, target in (("--target_accuracy", values.target_accuracy),
                          ("TARGET_ACCURACY", constants["TARGET_ACCURACY"])):
      if target is not None and (isinstance(target, bool) or not isinstance(target, float)
                                 or not 0 < target <= 1):
        raise ConfigError(field, target, "a test accuracy in (0, 1]")
    outcome.append(work.run_study(
        points, values.workdir, only=values.only, shard=shard,
        target_accuracy=values.target_accuracy, study_target=constants["TARGET_ACCURACY"],
        study_id=cli.file_id(values.study), compilation_cache=values.compilation_cache,
        devices_per_point=values.devices_per_point,
        limits=study_limits(values.study, constants["get_limits"])))
    if jax.process_index() == 0 and values.report:
      if outcome[0].statuses or not files.exists(
          os.path.join(values.workdir, layout.REPORT, layout.REPORT_MD)):
        print(f"lbt.study: report {study_report.build_report(values.workdir, values.include)}",
              flush=True)
      else:
        print(f"lbt.study: nothing was left to run (shard {values.shard}); the report is "
              "left as it is", flush=True)

  cli.exit_on_signals()
  return cli.with_failures(cli.run(command), outcome[0].failed if outcome else [], "lbt.study")


if __name__ == "__main__":
  cli.keep_freed_host_memory()
  sys.exit(main(sys.argv))
