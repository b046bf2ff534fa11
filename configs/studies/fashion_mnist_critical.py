"""The critical batch of the default study's MLP, measured for four optimizers.

  python -m lbt.limit --study=configs/studies/fashion_mnist_critical.py --workdir=DIR
  python -m lbt.limit --config=configs/studies/fashion_mnist_critical.py:lars --workdir=DIR

Each optimizer is one `lbt.limit` protocol (steps to a validation accuracy of
TARGET_ACCURACY, the learning rate tuned per batch on a power-of-two grid
around the optimizer's own scaling rule, batches doubling from START_BATCH)
on the MLP of `configs/studies/fashion_mnist.py` (two hidden layers of 128),
with 10,000 training examples held out for validation. `--study` runs them
one after another in DIR/<optimizer>/ and writes DIR/critical.md, the four
answers side by side. The default study's report points here for the
critical batch it can only extrapolate.
"""

import ml_collections

from configs import fashion_mnist
from configs.studies import fashion_mnist as default_study

OPTIMIZERS = ("momentum", "lars", "lamb", "adam")
START_BATCH = 128
VALIDATION_EXAMPLES = 10000
# The test accuracy of the default study's updates-to-target columns, here
# measured on the validation split.
TARGET_ACCURACY = default_study.TARGET_ACCURACY
BUDGET_EPOCHS, BUDGET_UPDATES = 10.0, 300
WARMUP_EPOCHS = 0.0  # constant learning rate: the budget does not change a trajectory


def get_config(optimizer: str = "momentum") -> ml_collections.ConfigDict:
  """The base config of one optimizer's protocol: the study's MLP at START_BATCH."""
  config = fashion_mnist.get_config(f"{optimizer},batch={START_BATCH},model=mlp")
  config.model.hidden_sizes = default_study.HIDDEN
  config.dataset.validation_examples = VALIDATION_EXAMPLES
  config.eval_batch_size = 5000
  config.schedule = ml_collections.ConfigDict(
      {"name": "constant", "warmup_epochs": WARMUP_EPOCHS})
  return config
