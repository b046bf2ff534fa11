"""The tiny three-point study several tests run (fixtures in conftest.py)."""

from lbt.io import cli

# Timings differ between runs; every other column must be equal.
TIMING = ("wall_time_s", "examples_per_second")

# Three points of a tiny MLP at 10 updates per epoch, each a cell of the batch
# sweep (lbt.studies.points): the second diverges (its LR ramps up to 1e3), the
# third runs long enough to be killed mid-way.
STUDY_FILE = """
from configs import fashion_mnist
from lbt.studies import points as points_lib

def point(arg, steps, eval_every, checkpoint_every=100):
  config = fashion_mnist.get_config(arg + ",model=mlp")
  config.model.hidden_sizes = (16,)
  config.num_train_steps = steps
  config.schedule.warmup_epochs = 0.2
  config.eval_every_steps = eval_every
  config.checkpoint_every_steps = checkpoint_every
  config.log_every_steps = 1
  config.eval_batch_size = 5000
  config.dataset.data_dir = {data_dir!r}
  return points_lib.point(config, "sweep",
                          cell=f"{{config.optimizer.name}}-b{{config.batch_size}}")

def plain_points():
  points = {{"momentum-b12000": point("momentum,batch=12000", 4, 2),
             "sgd-b6000": point("sgd,batch=6000", 12, 4),
             "lars-b6000": point("lars,batch=6000", 30, 10, checkpoint_every=5)}}
  points["sgd-b6000"].config.optimizer.learning_rate = 1e3
  points["sgd-b6000"].config.schedule.warmup_epochs = 1.0
  return points

def get_study(arg=None):
  return plain_points()
"""

# The same three points beside a searched cell (lbt.studies.cell_search) and a
# steps-to-target protocol (DIR/limits/momentum/): every kind of study work,
# for the fault sweep over the one runner.
FAULT_STUDY_FILE = STUDY_FILE + """
from lbt.studies import cell_search, limit_protocol

def get_study(arg=None):
  points = plain_points()
  searched = point("momentum,batch=12000", 4, 2).config
  searched.dataset.validation_examples = 5000
  points["momentum-b12000-searched"] = points_lib.point(
      searched, "sweep", cell="momentum-b12000-searched",
      search=cell_search.Search(max_trials=3, refine=False, runs=1, seeds_per_rate=1))
  return points

def get_limits(arg=None):
  config = fashion_mnist.get_config("momentum,batch=6000,model=mlp")
  config.model.hidden_sizes = (16,)
  config.dataset.data_dir = {data_dir!r}
  config.dataset.validation_examples = 5000
  config.eval_batch_size = 5000
  config.schedule.warmup_epochs = 0.0
  return {{"momentum": limit_protocol.Protocol(config, 0.7, 2.0, 10, max_batch=6000)}}
"""


def load(study_file):
  return cli.load_python_file(study_file, flag="--study", function="get_study")


def run_study(points, workdir, **options):
  """What `lbt.study` does, in this process: the study's work through the one
  runner, then its report; returns trial -> status of the trials it ran."""
  from lbt.reports import study_report  # pylint: disable=import-outside-toplevel
  from lbt.studies import work  # pylint: disable=import-outside-toplevel
  outcome = work.run_study(points, workdir, **options)
  if outcome.statuses or outcome.done:
    study_report.build_report(workdir)
  return outcome.statuses
