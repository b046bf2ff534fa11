"""Where is my limit? The critical batch of one config, measured by steps to target.

  python -m lbt.limit --config=configs/fashion_mnist.py:momentum,model=mlp \
      --workdir=DIR [--config.a.b=value ...] [--target_accuracy=X] \
      [--budget_epochs=E] [--budget_updates=U] [--shard=I/N]

The protocol, its searches and what limit.json holds:
`lbt.studies.limit_protocol`; limit.md: `lbt.reports.limit_report`."""

import math
import os
import sys
from typing import Dict, Sequence

import jax
import ml_collections

from lbt.engine import config as config_lib
from lbt.errors import ConfigError
from lbt.io import cli
from lbt.reports import limit_report
from lbt.studies import directory, results, work
from lbt.studies.limit_protocol import DEFAULT_VALIDATION_EXAMPLES, Protocol

DEFAULT_BUDGET_EPOCHS, DEFAULT_BUDGET_UPDATES = 10.0, 300


def _flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  values = flags.FlagValues()
  flags.DEFINE_string("config", None, "A config file with its argument, e.g. "
                      "configs/fashion_mnist.py:momentum,model=mlp.", flag_values=values)
  flags.DEFINE_string("study", None, "Instead of --config: a file whose OPTIMIZERS each "
                      "get_config(optimizer) describes, e.g. "
                      "configs/studies/fashion_mnist_critical.py.", flag_values=values)
  flags.DEFINE_string("workdir", None, "The directory of the trials, limit.json and "
                      "report/. Rerun to resume.", flag_values=values)
  flags.DEFINE_float("target_accuracy", None, "Validation accuracy each trial trains to "
                     "(default: the file's VALIDATION_TARGET, else the benchmark's).",
                     flag_values=values)
  flags.DEFINE_float("budget_epochs", None, "A trial's budget in epochs; its budget is the "
                     "larger of this and --budget_updates (default: the file's "
                     f"BUDGET_EPOCHS, else {DEFAULT_BUDGET_EPOCHS:g}).", flag_values=values)
  flags.DEFINE_integer("budget_updates", None, "A trial's budget in updates, for the large "
                       "batches (default: the file's BUDGET_UPDATES, else "
                       f"{DEFAULT_BUDGET_UPDATES}).", flag_values=values)
  flags.DEFINE_string("shard", "0/1", "I/N: this host runs the trials that fall to shard "
                      "I of N (by their names).", flag_values=values)
  return values


SETTINGS = ("VALIDATION_TARGET", "BUDGET_EPOCHS", "BUDGET_UPDATES", "TARGET_ACCURACY")


def protocol_from_file(values, spec: str, overrides: Sequence[str]) -> Protocol:
  """The protocol of one config file (and its argument), the flags over the
  file's constants over the defaults; checked before any compute."""
  config, constants = cli.load_python_file(spec, flag="--config", constants=SETTINGS)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError("--config", spec, "a file whose get_config returns a ConfigDict")
  cli.apply_overrides(config, overrides)
  if not config_lib.dataset_field(config, "validation_examples"):
    config.dataset.validation_examples = DEFAULT_VALIDATION_EXAMPLES
  pick = lambda *choices: next((v for v in choices if v is not None), None)
  if constants["TARGET_ACCURACY"] is not None:  # lbt.study's test target, not this one
    raise ConfigError(f"{spec}: TARGET_ACCURACY", constants["TARGET_ACCURACY"],
                      "VALIDATION_TARGET: lbt.limit trains each trial to a validation "
                      "accuracy, and TARGET_ACCURACY names lbt.study's test accuracy")
  target = pick(values.target_accuracy, constants["VALIDATION_TARGET"],
                results.DEFAULT_TEST_TARGETS.get(config.dataset.name))
  epochs = pick(values.budget_epochs, constants["BUDGET_EPOCHS"], DEFAULT_BUDGET_EPOCHS)
  updates = pick(values.budget_updates, constants["BUDGET_UPDATES"], DEFAULT_BUDGET_UPDATES)
  if target is None or isinstance(target, bool) or not 0 < target <= 1:
    raise ConfigError("--target_accuracy", target, "a validation accuracy in (0, 1]")
  if not (isinstance(epochs, (int, float)) and epochs > 0 and math.isfinite(epochs)):
    raise ConfigError("--budget_epochs", epochs, "a positive number")
  if not isinstance(updates, int) or updates < 0:
    raise ConfigError("--budget_updates", updates, "an integer >= 0")
  return Protocol(config, float(target), float(epochs), updates)


def protocols_from_flags(values, overrides: Sequence[str]) -> Dict[str, Protocol]:
  """label -> protocol: one for --config, one per optimizer of --study."""
  if not values.workdir:
    raise ConfigError("--workdir", None, "required (see python -m lbt.limit --help)")
  if bool(values.config) == bool(values.study):
    raise ConfigError("--config", values.config, "exactly one of --config=FILE[:ARG] and "
                      "--study=FILE")
  if values.config:
    return {"": protocol_from_file(values, values.config, overrides)}
  _, constants = cli.load_python_file(values.study, flag="--study", function="get_config",
                                      constants=("OPTIMIZERS",))
  names = constants["OPTIMIZERS"]
  if not names or not all(isinstance(n, str) for n in names):
    raise ConfigError("--study", values.study, "a file with OPTIMIZERS, a tuple of "
                      "optimizer names, and get_config(optimizer)")
  return {name: protocol_from_file(values, f"{values.study}:{name}", overrides)
          for name in names}


def main(argv: Sequence[str]) -> int:
  """The command line; returns the exit status (2 bad input, 1 a failed trial)."""
  values = _flags()
  outcome = []

  def command():
    overrides = cli.parse_flags(values, argv, program="lbt.limit")
    protocols = protocols_from_flags(values, overrides)
    shard = directory.parse_shard(values.shard)
    ids = {label: "lbt.limit " + cli.file_id(f"{values.study}:{label}" if label
                                             else values.config) for label in protocols}
    ran, summaries = work.run_limits(protocols, values.workdir, shard=shard, study_ids=ids)
    outcome.append(ran)
    if jax.process_index() != 0 or not ran.done:
      return
    for label, summary in summaries.items():
      folder = os.path.join(values.workdir, label) if label else values.workdir
      limit_report.write_report(summary, folder)
      limit_report.print_summary(summary, folder)
    if values.study:
      print(f"lbt.limit: {limit_report.write_comparison(summaries, values.workdir)}")

  cli.exit_on_signals()
  return cli.with_failures(cli.run(command), outcome[0].failed if outcome else [], "lbt.limit")


if __name__ == "__main__":
  cli.keep_freed_host_memory()
  sys.exit(main(sys.argv))
