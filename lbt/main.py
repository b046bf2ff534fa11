"""Command line: python -m lbt.main --config=configs/fashion_mnist.py:lars,batch=8192 --workdir=DIR

Parses flags and hands the config to `lbt.train`. Bad input of any kind (flags,
config files, overrides, fields, the workdir) ends with one line naming the
field, the value and what is allowed, and exit status 2, before any compute.
"""

import os
import re
import sys
from typing import List, Optional

from absl import flags, logging
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

# Exit statuses, so that scripts (and the study runner) can tell outcomes apart.
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_CHECKPOINT = 2, 3, 4
EXIT_INTERRUPTED, EXIT_PREEMPTED = 130, 143


KNOWN_FLAGS = ("--config", "--workdir", "--allow_config_change",
               "--coordinator_address", "--num_processes", "--process_id")


def _one_line(text: str) -> str:
  return " ".join(str(text).replace("\\n", " ").split())


def _config_file_error(error: Exception) -> str:
  """The config file's own last line: its exception, not ml_collections' frames."""
  last = str(error).strip().splitlines()[-1]
  return re.sub(r"^[\w.]*(Error|Exception): ", "", last.strip())


def _check_overrides(config, argv: List[str]) -> None:
  """Each --config.a.b=v must name an existing field (the config is locked)."""
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path, _, value = arg[len("--config."):].partition("=")
    node, parts = config, path.split(".")
    for depth, part in enumerate(parts):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        section = "config" + "".join("." + p for p in parts[:depth])
        raise ConfigError(f"--config.{path}", value or None,
                          f"not a field of {section}; its fields are: "
                          f"{', '.join(sorted(keys)) or 'none'}")
      node = node[part]


def _parse_flags(argv: List[str]) -> None:
  """absl parsing, repeatable in one process.

  ml_collections defines one flag per `--config.x` override, reading them from
  sys.argv; forget those of an earlier call and show it this argv.
  """
  FLAGS.unparse_flags()
  for name in list(FLAGS):
    if name.startswith("config."):
      delattr(FLAGS, name)
  saved, sys.argv = sys.argv, list(argv)
  try:
    FLAGS(argv)
  finally:
    sys.argv = saved


def parse(argv: List[str]) -> None:
  """Parses flags; raises ConfigError with one readable line on any problem."""
  plain = [a for a in argv if not a.startswith("--config.")]
  try:
    _parse_flags(plain)
  except flags.UnrecognizedFlagError as e:
    hint = re.search(r"Did you mean: (\w+)", str(e))
    raise ConfigError(f"--{e.flagname}", e.flagvalue or None,
                      f"not a flag of lbt.main; its flags are: {', '.join(KNOWN_FLAGS)}"
                      f"{'; did you mean --' + hint.group(1) + '?' if hint else ''}") from None
  except Exception as e:  # absl and ml_collections raise freely.
    text = str(e)
    if not isinstance(e, flags.Error):  # Raised while importing the config file.
      raise ConfigError("--config", _flag_value(argv, "--config"),
                        f"a config file that loads ({type(e).__name__}: "
                        f"{_one_line(text)})") from None
    if "config file" in text or "Traceback" in text:
      line = _config_file_error(e)
      if "is invalid:" in line:  # A ConfigError of the config's own argument.
        raise ConfigError(line) from None
      raise ConfigError("--config", _flag_value(argv, "--config"),
                        f"a config file whose get_config() runs ({line})") from None
    raise ConfigError(f"flags: {_one_line(text)}") from None
  try:
    loaded = FLAGS.config
    if loaded is not None:
      loaded.keys()  # A config file that failed to load raises only on use.
  except Exception as e:  # The config file failed to load or to run.
    raise ConfigError("--config", _flag_value(argv, "--config"),
                      f"a config file that loads ({_config_file_error(e)})") from None
  if loaded is None:
    raise ConfigError("--config", None, "a config file such as "
                      "configs/fashion_mnist.py or configs/fashion_mnist.py:lars,batch=8192")
  _check_overrides(loaded, argv)
  try:
    _parse_flags(argv)
  except Exception as e:  # A value of the wrong type for its field.
    raise ConfigError(f"flags: {_one_line(e)}") from None
  if not FLAGS.workdir:
    raise ConfigError("--workdir", FLAGS.workdir, "a directory for the run")
  if os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
    raise ConfigError("--workdir", FLAGS.workdir, "a directory, not a file")
  if FLAGS.coordinator_address and (FLAGS.num_processes is None or
                                    FLAGS.process_id is None):
    raise ConfigError("--coordinator_address", FLAGS.coordinator_address,
                      "given together with --num_processes and --process_id")
  if FLAGS.num_processes is not None and FLAGS.process_id is not None and not (
      0 <= FLAGS.process_id < FLAGS.num_processes):
    raise ConfigError("--process_id", FLAGS.process_id,
                      f"in [0, --num_processes={FLAGS.num_processes})")


def _flag_value(argv: List[str], flag: str):
  return next((a.partition("=")[2] for a in argv if a.startswith(flag + "=")), None)


def run(argv: Optional[List[str]] = None) -> int:
  """The whole command; returns the exit status instead of exiting."""
  argv = list(sys.argv if argv is None else argv)
  try:
    parse(argv)
    logging.set_verbosity(logging.WARNING)
    from lbt import parallel, train
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                             allow_config_change=FLAGS.allow_config_change)
  except ConfigError as e:
    print(f"lbt: error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  except KeyboardInterrupt:
    print("lbt: interrupted; rerun the same command to resume from the last "
          "checkpoint.", file=sys.stderr)
    return EXIT_INTERRUPTED
  except Exception as e:  # pylint: disable=broad-except
    from lbt import checkpoint, train
    if isinstance(e, train.Diverged):
      print(f"lbt: {e}", file=sys.stderr)
      return EXIT_DIVERGED
    if isinstance(e, checkpoint.CheckpointSaveError):
      print(f"lbt: error: {e}", file=sys.stderr)
      return EXIT_CHECKPOINT
    if isinstance(e, train.Preempted):
      print(f"lbt: {e}; rerun the same command to resume.", file=sys.stderr)
      return EXIT_PREEMPTED
    raise
  return 0


if __name__ == "__main__":
  sys.exit(run())
