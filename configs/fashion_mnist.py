"""Fashion-MNIST: every batch-size point of the offline study, one optimizer each.

  python -m lbt.main --config=configs/fashion_mnist.py:lars,batch=8192 --workdir=DIR

The argument picks the point: the optimizer (first word), `batch` (global batch
of one update, up to the full 60,000), `epochs`, `model` and `micro` (global
microbatch; 0 means the whole batch in one pass). Learning rates are given at
the reference batch B0 = 256 and scaled to the point's batch by the rule named
next to each optimizer, so the batch dependence is visible here.
"""

import ml_collections

from lbt import optim
from lbt.config import parse_point
from lbt.errors import ConfigError

REFERENCE_BATCH = 256

# Base learning rate at REFERENCE_BATCH, the scaling rule to the point's batch,
# and the other hyperparameters of each optimizer this benchmark offers (the
# registry lbt.optim.OPTIMIZERS holds every optimizer; these are the settings).
OPTIMIZER_SETTINGS = {
    # Goyal et al. 2017: linear scaling of momentum SGD.
    "sgd": dict(learning_rate=0.1, scaling="linear", weight_decay=5e-4),
    "momentum": dict(learning_rate=0.1, scaling="linear", momentum=0.9, weight_decay=5e-4),
    "nesterov": dict(learning_rate=0.1, scaling="linear", momentum=0.9, weight_decay=5e-4),
    # Adaptive methods: square-root scaling (Hoffer et al. 2017; You et al. 2019).
    "adam": dict(learning_rate=1e-3, scaling="sqrt", weight_decay=0.0),
    "adamw": dict(learning_rate=1e-3, scaling="sqrt", weight_decay=0.05),
    "adagrad": dict(learning_rate=0.01, scaling="sqrt", weight_decay=0.0),
    "rmsprop": dict(learning_rate=1e-3, scaling="sqrt", weight_decay=0.0),
    # Layer-wise adaptive: sqrt scaling as in the LARS-ImageNet table of You's lab.
    "lars": dict(learning_rate=2.0, scaling="sqrt", momentum=0.9, weight_decay=5e-4,
                 trust_coefficient=0.001),
    "lamb": dict(learning_rate=4e-3, scaling="sqrt", weight_decay=0.01),
}


# The models this benchmark offers, with every option spelled out so that
# `--config.model.<option>=...` works (lbt.models.names() lists them all).
MODEL_SETTINGS = {
    "lenet5": dict(width=1),
    "mlp": dict(hidden_sizes=(512, 512)),
    "resnet_tiny": dict(),
    "resnet20": dict(zero_init_residual=True),
}


def optimizer_point(name: str) -> ml_collections.ConfigDict:
  """The optimizer section of one point, with every hyperparameter spelled out.

  The LR is given at REFERENCE_BATCH; lbt.optim scales it to the run's batch.
  """
  if name not in OPTIMIZER_SETTINGS:
    raise ConfigError("config argument 'optimizer'", name,
                      f"one of {', '.join(sorted(OPTIMIZER_SETTINGS))}")
  section = dict(name=name, base_batch_size=REFERENCE_BATCH,
                 **optim.default_hyperparameters(name))
  section.update(OPTIMIZER_SETTINGS[name])
  return ml_collections.ConfigDict(section)


def model_point(name: str) -> ml_collections.ConfigDict:
  if name not in MODEL_SETTINGS:
    raise ConfigError("config argument 'model'", name,
                      f"one of {', '.join(sorted(MODEL_SETTINGS))}")
  return ml_collections.ConfigDict(dict(name=name, dtype="float32", **MODEL_SETTINGS[name]))


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  point = parse_point(arg, optimizer="momentum", batch=256, epochs=6.0,
                      model="lenet5", micro=0)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = dict(
      name="fashion_mnist",
      data_dir="",   # "" = $LBT_DATA_DIR or ~/tensorflow_datasets.
      cache=True,    # Decode the 70,000 images once into memory.
      # The last N examples of a fixed (seed-independent) permutation of the
      # training split, held out to choose learning rates on; batch limits and
      # updates per epoch count the rest. 0 = train on all 60,000.
      validation_examples=0,
      image_size=0)  # 0 = the native 28x28.
  config.model = model_point(point.model)
  config.batch_size = point.batch            # Global batch of one update.
  config.microbatch_size = point.micro      # Global; 0 = no accumulation.
  config.eval_batch_size = 2000              # Evaluation is independent of the batch.
  config.num_epochs = point.epochs
  config.num_train_steps = 0                 # > 0 overrides num_epochs (smoke runs;
                                             # a run shorter than its warmup warms up
                                             # for 10 % of it).
  config.optimizer = optimizer_point(point.optimizer)
  config.schedule = dict(name="cosine", warmup_epochs=1.0, end_learning_rate=0.0)
  config.loss = dict(label_smoothing=0.0)
  # BN statistics over ghost batches of g examples (Hoffer et al.); 0 = over
  # each whole microbatch.
  config.bn = dict(ghost_size=0)
  config.log_every_steps = 50
  config.eval_every_steps = 0                # 0 = evaluate at the end only.
  config.checkpoint_every_steps = 500        # and always at the end.
  config.checkpoint_keep = 3
  return config
