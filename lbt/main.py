"""Command line: python -m lbt.main --config=configs/fashion_mnist.py:lars,batch=8192 --workdir=DIR

Parses flags and hands the config to `lbt.train`; bad input ends with one line
naming the field, the value and what is allowed, and a non-zero exit code.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from lbt.errors import ConfigError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "A config file, with its argument after ':', e.g. "
    "configs/fashion_mnist.py:lars,batch=8192. Override fields with --config.a.b=v.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the run: config.json, "
                    "checkpoints/, metrics.jsonl, TensorBoard events. Rerun with "
                    "the same workdir to resume.")
flags.DEFINE_list("allow_config_change", [], "Fields that may differ from the "
                  "config.json of the workdir when resuming, e.g. num_epochs.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 of a "
                    "multi-process run (not needed on Cloud TPU).")
flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from lbt import parallel, train
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                             allow_config_change=FLAGS.allow_config_change)
  except ConfigError as e:
    print(f"lbt: error: {e}", file=sys.stderr)
    return 2
  except train.Diverged as e:
    print(f"lbt: {e}", file=sys.stderr)
    return 3
  except train.Preempted as e:
    print(f"lbt: {e}; rerun the same command to resume.", file=sys.stderr)
    return 143
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
