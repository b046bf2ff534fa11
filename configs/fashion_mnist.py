"""Fashion-MNIST: every batch-size point of the offline study, one optimizer each.

  python -m lbt.main --config=configs/fashion_mnist.py:lars,batch=8192 --workdir=DIR

The argument picks the point: the optimizer (first word), `batch` (global batch
of one update, up to the full 60,000), `epochs`, `model` and `micro` (global
microbatch; 0 means the whole batch in one pass, or for the optimizers that
need microbatches the size `default_microbatch` names). Learning rates are
given at the reference batch B0 = 256 and scaled to the point's batch by the
rule named next to each optimizer, so the batch dependence is visible here.
CLARS points run without warmup (NO_WARMUP), the claim of its paper.
"""

import ml_collections

from lbt import optim
from lbt.engine.config import parse_point
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
    # LANS (Zheng et al. 2020): LAMB's moments on normalised gradients; LAMB's
    # LR, rule and decay (the paper kept LAMB's settings for BERT).
    "lans": dict(learning_rate=4e-3, scaling="sqrt", weight_decay=0.01),
    # CLARS (Huo et al. 2021) differs from LARS only in the trust ratio's
    # denominator; its points run without warmup (get_config), its claim.
    "clars": dict(learning_rate=2.0, scaling="sqrt", momentum=0.9, weight_decay=5e-4,
                  trust_coefficient=0.001),
}
# VRGD (Jiang et al. 2023): each base optimizer's settings plus the GSNR band
# of the paper (0.1, 1) and, for the Adam-type bases, its GSNR momentum b3.
for _base in ("sgd", "momentum", "lars", "adam", "lamb"):
  OPTIMIZER_SETTINGS[f"vr_{_base}"] = dict(
      OPTIMIZER_SETTINGS[_base], gamma_low=0.1, gamma_high=1.0,
      **(dict(b3=0.9) if _base in ("adam", "lamb") else {}))
# Optimizers whose claim is training without warmup.
NO_WARMUP = ("clars",)
# VRGD's variance estimate needs at least this many microbatch gradients;
# more give a better estimate at the cost of smaller device calls.
GSNR_MICROBATCHES = 8
# CLARS's per-example gradients take microbatch x parameters of memory, and
# time with it: on the 2-core CPU, the study's MLP at batch 8192 costs ~3x more
# CPU per example with microbatches of 1024 (0.5 GB of gradients per call)
# than of 32-64 (they stay in cache), so at most this many examples a call.
PER_EXAMPLE_MICROBATCH = 64
# A microbatch chosen here is a multiple of 8, so it shards over 1, 2, 4 or 8 devices.
DEVICE_MULTIPLE = 8


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


def _largest_microbatch(batch: int, at_most: int) -> int:
  """The largest multiple of DEVICE_MULTIPLE that divides batch and is <= at_most (0: none)."""
  for micro in range(at_most - at_most % DEVICE_MULTIPLE, 0, -DEVICE_MULTIPLE):
    if batch % micro == 0:
      return micro
  return 0


def default_microbatch(optimizer: str, batch: int) -> int:
  """The microbatch a point gets when its argument says micro=0.

  0 (no accumulation), except for optimizers that need what only microbatches
  give (`lbt.optim.needs`):
  - the VRGD family (microbatch_grad_sq): the largest multiple of 8 dividing
    the batch that is at most batch / GSNR_MICROBATCHES, i.e. the fewest
    microbatches >= 8 whose size is a multiple of 8 devices (256 -> 8 x 32,
    8192 -> 8 x 1024, 60000 -> 10 x 6000); if none (batch < 64), the largest
    at most batch / 2 (>= 2 microbatches, 16 -> 2 x 8); else 0, which
    validation refuses for this family, naming the rule;
  - CLARS (per_example_grad_norm): the batch itself up to
    PER_EXAMPLE_MICROBATCH, else the largest multiple of 8 dividing it that is
    at most that (256 -> 4 x 64, 50000 -> 1250 x 40, 60000 -> 1250 x 48), so
    the per-example gradients' memory stays bounded.
  """
  needs = optim.needs(dict(name=optimizer))
  if "microbatch_grad_sq" in needs:
    return (_largest_microbatch(batch, batch // GSNR_MICROBATCHES)
            or _largest_microbatch(batch, batch // 2))
  if "per_example_grad_norm" in needs and batch > PER_EXAMPLE_MICROBATCH:
    return _largest_microbatch(batch, PER_EXAMPLE_MICROBATCH)
  return 0


def model_point(name: str) -> ml_collections.ConfigDict:
  if name not in MODEL_SETTINGS:
    raise ConfigError("config argument 'model'", name,
                      f"one of {', '.join(sorted(MODEL_SETTINGS))}")
  return ml_collections.ConfigDict(dict(name=name, dtype="float32", **MODEL_SETTINGS[name]))


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  point = parse_point(arg, optimizer="momentum", batch=256, epochs=6.0,
                      model="lenet5", micro=0)
  optimizer = optimizer_point(point.optimizer)  # A bad name fails first.
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
  # Global; 0 = no accumulation (or what the optimizer needs: default_microbatch).
  config.microbatch_size = point.micro or default_microbatch(point.optimizer, point.batch)
  config.eval_batch_size = 2000              # Evaluation is independent of the batch.
  config.num_epochs = point.epochs
  config.num_train_steps = 0                 # > 0 overrides num_epochs (smoke runs;
                                             # a run shorter than its warmup warms up
                                             # for 10 % of it).
  config.optimizer = optimizer
  config.schedule = dict(name="cosine", end_learning_rate=0.0,
                         warmup_epochs=0.0 if point.optimizer in NO_WARMUP else 1.0)
  config.loss = dict(
      label_smoothing=0.0,
      # ConAdv (Liu et al. 2022), off by default: sign steps of step_size in an
      # L-inf ball of epsilon around the standardised input (0.1 std ~ 9/255 of
      # the pixel range), built with the previous update's ("stale") parameters;
      # the loss weights clean and adversarial examples 1 - weight and weight.
      adversarial=dict(enabled=False, step_size=0.1, num_steps=1, epsilon=0.1,
                       parameters="stale", weight=0.5))
  # BN statistics over ghost batches of g examples (Hoffer et al.); 0 = over
  # each whole microbatch.
  config.bn = dict(ghost_size=0)
  config.log_every_steps = 50
  config.eval_every_steps = 0                # 0 = evaluate at the end only.
  config.checkpoint_every_steps = 500        # and always at the end.
  config.checkpoint_keep = 3
  # True: a batch of one microbatch runs as two halves, so that the gradient
  # noise scale is measured (metrics.jsonl's b_simple); see README.
  config.noise_scale_split = False
  return config
