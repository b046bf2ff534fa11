"""The name of every file and folder lbt writes, in a run's workdir and in a
study directory: the one place that says what lies where, so that every
module that reads or writes one of them names it from here."""

# A run's workdir (also each point of a study).
CONFIG = "config.json"            # the run's config, checked on resume
FACTS = "facts.json"              # what validation derived from it (RunFacts)
CHECKPOINTS = "checkpoints"       # orbax: the train state and the data position
METRICS = "metrics.jsonl"         # one line per update, eval, event
TENSORBOARD = "tensorboard"       # TensorBoard events
HPARAMS = "hparams"               # under TENSORBOARD: the trial's HParams dashboard
LOCK = "lbt.lock"                 # the trainer's lease
LOG = "lbt.log"                   # process 0's log
OUTCOME = "study_outcome.json"    # how a study's point ended (failed, diverged)
ROLE = "role.json"                # what a study's point is for (its cell, its search)

# A study directory (holds one workdir per point).
STUDY = "study.json"              # which study file owns the directory, its target
DATABASE = "results.sqlite"       # one row per point, rebuilt from the workdirs
DATABASE_LOCK = "results.sqlite.lock"  # one writer of DATABASE at a time (local disks)
REPORT = "report"                 # report.md, limit.md and their PNGs
REPORT_MD = "report.md"
LIMIT = "limit.json"              # lbt.limit's summary
LIMIT_MD = "limit.md"
WAVE = "wave.json"                # lbt.limit: its latest wave of trials, written whole
COMPILATION_CACHE = "compilation_cache"
LIMITS = "limits"                 # one steps-to-target protocol per folder (lbt.study)
CRITICAL = "critical.json"        # lbt.limit --study: each optimizer's limit.json
CRITICAL_MD = "critical.md"
FULL_BATCH = "full_batch.json"    # a full-batch study's summary (lbt.studies.full_batch)
CHOICES = "choices"               # one <cell>.json per searched cell: the runner's choice
JOURNAL = "journal.json"          # the runner's current wave of trials, written whole

# A point may not be named like the study directory's own files.
RESERVED = (STUDY, DATABASE, REPORT, LIMIT, LOCK, LOG, COMPILATION_CACHE, LIMITS, CRITICAL,
            CRITICAL_MD, WAVE, FULL_BATCH, CHOICES, JOURNAL)

# A data directory.
FASHION_MNIST_LOCK = ".lbt_fashion_mnist.lock"  # one process prepares Fashion-MNIST


def process_log(index: int) -> str:
  """The log file of process `index` (process 0 writes LOG)."""
  return LOG if index == 0 else f"lbt.process_{index}.log"


def choice_file(cell: str) -> str:
  """Where the runner writes a searched cell's choice, relative to its study
  directory (a cell label may hold "/", as a rule rung's does)."""
  return f"{CHOICES}/{cell.replace('/', '__')}.json"
