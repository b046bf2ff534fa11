"""The name of every file and folder lbt writes, in a run's workdir and in a
study directory: the one place that says what lies where, so that every
module that reads or writes one of them names it from here."""

# A run's workdir (also each point of a study).
CONFIG = "config.json"            # the run's config, checked on resume
FACTS = "facts.json"              # what validation derived from it (RunFacts)
CHECKPOINTS = "checkpoints"       # orbax: the train state and the data position
METRICS = "metrics.jsonl"         # one line per update, eval, event
TENSORBOARD = "tensorboard"       # TensorBoard events
LOCK = "lbt.lock"                 # the trainer's lease
LOG = "lbt.log"                   # process 0's log
OUTCOME = "study_outcome.json"    # how a study's point ended (failed, diverged)
ROLE = "role.json"                # what a study's point is for (its cell, its search)

# A study directory (holds one workdir per point).
STUDY = "study.json"              # which study file owns the directory, its target
DATABASE = "results.sqlite"       # one row per point, rebuilt from the workdirs
REPORT = "report"                 # report.md, limit.md and their PNGs
REPORT_MD = "report.md"
LIMIT = "limit.json"              # lbt.limit's summary
LIMIT_MD = "limit.md"
COMPILATION_CACHE = "compilation_cache"

# A point may not be named like the study directory's own files.
RESERVED = (STUDY, DATABASE, REPORT, LIMIT, LOCK, LOG, COMPILATION_CACHE)


def process_log(index: int) -> str:
  """The log file of process `index` (process 0 writes LOG)."""
  return LOG if index == 0 else f"lbt.process_{index}.log"
