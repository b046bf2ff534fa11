"""The critical batch of the default study's MLP, measured for four optimizers.

  python -m lbt.limit --study=configs/studies/fashion_mnist_critical.py --workdir=DIR
  python -m lbt.limit --config=configs/studies/fashion_mnist_critical.py:lars --workdir=DIR

Each optimizer is one `lbt.limit` protocol (steps to a validation accuracy of
VALIDATION_TARGET, the learning rate tuned per batch on a power-of-two grid
around the optimizer's own scaling rule, batches doubling from START_BATCH)
on the MLP of `configs/studies/fashion_mnist.py` (two hidden layers of 128),
with 10,000 training examples held out for validation. `--study` runs them
one after another in DIR/<optimizer>/ and writes DIR/critical.md, the four
answers side by side. The default study runs the same protocols itself
(`:full` Nesterov's too), into DIR/limits/<optimizer>/, and reports them in its §2.
"""

import ml_collections

from configs.studies import fashion_mnist as default_study

OPTIMIZERS = default_study.LIMIT_OPTIMIZERS  # momentum, LARS, LAMB, Adam
START_BATCH = default_study.LIMIT_START_BATCH
VALIDATION_EXAMPLES = default_study.VALIDATION_EXAMPLES
# The validation accuracy each trial trains to: the default study's protocols'.
VALIDATION_TARGET = default_study.VALIDATION_TARGET
BUDGET_EPOCHS = default_study.LIMIT_BUDGET_EPOCHS
BUDGET_UPDATES = default_study.LIMIT_BUDGET_UPDATES


def get_config(optimizer: str = "momentum") -> ml_collections.ConfigDict:
  """The base config of one optimizer's protocol: the study's MLP at START_BATCH
  (the default study's own protocols, `default_study.get_limits`, use it too)."""
  return default_study.limit_config(optimizer, START_BATCH)
