"""Command line: python -m lbt.main --config=configs/fashion_mnist.py:lars,batch=8192 --workdir=DIR

Parses flags and hands the config to `lbt.train`. Bad input of any kind (flags,
config files, overrides, fields, the workdir) ends with one line naming the
field, the value and what is allowed, and exit status 2, before any compute;
the other exit statuses are bound to the exception classes in `lbt.errors`.
"""

import os
import sys
from typing import List, Optional

from absl import flags, logging
import ml_collections

from lbt.io import cli
from lbt.io import files
from lbt.errors import ConfigError

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "config", None, "A config file, with its argument after ':', e.g. "
    "configs/fashion_mnist.py:lars,batch=8192. Override fields with --config.a.b=v.",
    flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "Directory of the run: config.json, "
                    "checkpoints/, metrics.jsonl, TensorBoard events. Rerun with "
                    "the same workdir to resume.", flag_values=FLAGS)
flags.DEFINE_list("allow_config_change", [], "Fields that may differ from the "
                  "config.json of the workdir when resuming, e.g. num_epochs.",
                  flag_values=FLAGS)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 of a "
                    "multi-process run (not needed on Cloud TPU).", flag_values=FLAGS)
flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.",
                     flag_values=FLAGS)
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.",
                     flag_values=FLAGS)


def parse(argv: List[str]) -> ml_collections.ConfigDict:
  """Parses the flags and loads the locked, overridden config; checks the flags."""
  overrides = cli.parse_flags(FLAGS, argv, program="lbt.main")
  if not FLAGS.config:
    raise ConfigError("--config", None, "a config file such as "
                      "configs/fashion_mnist.py or configs/fashion_mnist.py:lars,batch=8192")
  config = cli.load_python_file(FLAGS.config)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError("--config", FLAGS.config,
                      "a file whose get_config() returns an ml_collections.ConfigDict")
  config.lock()
  cli.apply_overrides(config, overrides)
  if not FLAGS.workdir:
    raise ConfigError("--workdir", FLAGS.workdir, "a directory for the run")
  if files.is_remote(FLAGS.workdir):  # gs://BUCKET/DIR: no file can be in its way.
    files.check_location(FLAGS.workdir, "--workdir")
  else:
    existing = os.path.abspath(FLAGS.workdir)
    while not os.path.exists(existing):  # Its first existing ancestor.
      existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
      raise ConfigError("--workdir", FLAGS.workdir, "a directory, not a file" if
                        existing == os.path.abspath(FLAGS.workdir) else
                        f"a directory, not a path below the file {existing}")
  if FLAGS.coordinator_address and None in (FLAGS.num_processes, FLAGS.process_id):
    raise ConfigError("--coordinator_address", FLAGS.coordinator_address,
                      "given together with --num_processes and --process_id")
  if None not in (FLAGS.num_processes, FLAGS.process_id) and not (
      0 <= FLAGS.process_id < FLAGS.num_processes):
    raise ConfigError("--process_id", FLAGS.process_id,
                      f"in [0, --num_processes={FLAGS.num_processes})")
  return config


def run(argv: Optional[List[str]] = None) -> int:
  """The whole command; returns the exit status instead of exiting."""
  argv = list(sys.argv if argv is None else argv)

  def command():
    config = parse(argv)
    logging.set_verbosity(logging.WARNING)
    from lbt.engine import parallel, train
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
    train.train_and_evaluate(config, FLAGS.workdir,
                             allow_config_change=FLAGS.allow_config_change)

  return cli.run(command)


if __name__ == "__main__":
  cli.keep_freed_host_memory()
  cli.exit_on_signals()
  sys.exit(run())
