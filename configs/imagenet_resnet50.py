"""ImageNet / ResNet-50: every batch-size point of the study, per optimizer.

  python -m lbt.main --workdir=gs://BUCKET/run \\
    --config=configs/imagenet_resnet50.py:lars,batch=819200,tpu=v4,chips=512

The argument picks the point: the optimizer (first word), `batch` (the global
batch of one update, from 1,024 to 819,200, or the full 1,281,167), `epochs`
(0 = the optimizer's budget below), and the machine: `tpu` (generation), `chips`
(the number of JAX devices of the slice: TensorCores on v2/v3, chips on v4,
v5e, v5p, v6e), `mem_gib` (HBM per device, 0 = the generation's) and `micro`
(global microbatch, 0 = derived from the memory budget). The machine changes
only the microbatch, so 819,200 runs on a v3-8 (512 microbatches) as on a
v4-1024 (4). The gradient is the same mean over the batch either way, but
BatchNorm's statistics are taken over the microbatch, so the two runs differ
there; `--config.bn.ghost_size=g` with g dividing both microbatches makes the
statistics batch independent of the slice.

Hyperparameters (from the sources named with each):
- lars: Google's MLPerf v0.7 ResNet-50 table (base LR, warmup, epochs, momentum
  and weight decay by batch range), poly power 2 to 1e-4, label smoothing 0.1,
  trust coefficient 0.001, no decay or trust ratio on biases and BN.
- momentum: Goyal et al.'s baseline, lr 0.1 x B/256, 5 warmup epochs, x0.1 at
  epochs 30/60/80 of 90, momentum 0.9, weight decay 1e-4 (none on BN/biases).
- nesterov: MLPerf's non-LARS fallback, the same schedule with Nesterov.
- adam, adamw, adagrad, rmsprop: the "+" variants of the LAMB paper's
  comparison (Goyal's warmup and step schedule added); sqrt LR scaling.
- lamb: Adam moments with the layer-wise trust ratio; sqrt scaling and
  warmup growing with the batch (LEGW). LR and decay are INFERENCE (the LAMB
  paper's ImageNet values are not retrieved), and are config fields.

An lbt epoch is N // B updates (the pipeline drops each epoch's remainder), so
at B = 819,200 one "epoch" is one update of 819,200 examples.
"""

import math
from typing import NamedTuple

import ml_collections

from lbt import optim
from lbt.engine.config import parse_point
from lbt.errors import ConfigError

NUM_TRAIN = 1_281_167   # ImageNet-1k train; the full batch.
NUM_EVAL = 50_000
REFERENCE_BATCH = 256   # B0 of the linear and sqrt scaling rules.
# The batch-size points of You et al. 2020, 1K up to the full set.
BATCH_SIZES = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 81920, 131072,
               262144, 524288, 819200, NUM_TRAIN)

# HBM of one JAX device, GiB. v2/v3 expose each TensorCore (8 / 16 GiB of a
# chip's 16 / 32); v4 and v5p fuse a chip's two cores into one device.
DEVICE_MEMORY_GIB = {"v2": 8.0, "v3": 16.0, "v4": 32.0, "v5e": 16.0,
                     "v5p": 95.0, "v6e": 32.0}
# The share of HBM given to examples once parameters and optimizer state are
# placed; the rest is XLA's workspace and fragmentation.
USABLE_FRACTION = 0.8
# Parameters, gradients, the accumulated gradient and two optimizer slots in
# float32 plus a bfloat16 copy: 25.6M x 22 B = 0.56 GB, rounded up.
FIXED_GIB = 1.0
# Memory one 224 x 224 example holds for the backward pass, MiB per byte of
# the compute dtype. ResNet-50 v1.5's conv outputs sum to ~11.3M values per
# image (stem 0.8M, maxpool 0.2M, stages 4.4M + 3.1M + 2.2M + 0.6M, counted
# from the feature-map shapes); with the BN and ReLU outputs XLA keeps after
# fusion, ~2.5 values per conv output, that is ~28M values = 28 MiB per byte:
# 56 MiB per example in bfloat16. Cross-check: Flax's ImageNet example runs
# 256 per V100 (16 GB, float16) and advises 256 per TPU chip.
ACTIVATION_MIB_PER_BYTE = 28.0
DTYPE_BYTES = {"bfloat16": 2, "float32": 4}


class MicrobatchPlan(NamedTuple):
  """How a global batch is cut into accumulation steps on a given slice."""
  per_device: int         # examples per device in one microbatch
  microbatch: int         # global microbatch = per_device x devices
  num_microbatches: int   # accumulation steps per update
  padded: bool            # True when microbatch x num_microbatches > batch

  @property
  def padded_batch(self) -> int:
    return self.microbatch * self.num_microbatches


def examples_per_device(tpu: str, mem_gib: float, mib_per_example: float) -> int:
  """The most examples one device holds for the backward pass, at least 1."""
  if tpu not in DEVICE_MEMORY_GIB:
    raise ConfigError("config argument 'tpu'", tpu,
                      f"one of {', '.join(DEVICE_MEMORY_GIB)}")
  memory = mem_gib or DEVICE_MEMORY_GIB[tpu]
  if memory <= FIXED_GIB:
    raise ConfigError("config argument 'mem_gib'", mem_gib,
                      f"more than the {FIXED_GIB} GiB of parameters and state (0 = default)")
  return max(1, int((memory * USABLE_FRACTION - FIXED_GIB) * 1024 // mib_per_example))


def microbatch_plan(batch: int, devices: int, per_device_max: int) -> MicrobatchPlan:
  """The largest microbatch within memory that divides the batch, else padded.

  A microbatch is a multiple of the device count. The largest per-device count
  k <= per_device_max with batch % (k x devices) == 0 is taken when it keeps at
  least half the memory in use; otherwise (a prime such as 1,281,167, or a
  batch that is not a multiple of the devices) the batch is split into the
  fewest microbatches that fit, as equal as the devices allow, and the last one
  is padded with masked examples (fewer than num_microbatches x devices).
  """
  if devices < 1:
    raise ConfigError("config argument 'chips'", devices, "a positive integer")
  if batch < 1:
    raise ConfigError("config argument 'batch'", batch, "a positive integer")
  per_device_max = min(per_device_max, math.ceil(batch / devices))
  for k in range(per_device_max, (per_device_max + 1) // 2 - 1, -1):
    if k > 0 and batch % (k * devices) == 0:
      return MicrobatchPlan(k, k * devices, batch // (k * devices), False)
  count = math.ceil(batch / (per_device_max * devices))
  k = math.ceil(batch / (count * devices))
  return MicrobatchPlan(k, k * devices, count, k * devices * count != batch)


def mlperf_lars(batch: int) -> dict:
  """Google's MLPerf v0.7 ResNet-50 LARS hyperparameters for a global batch.

  The base LR is the peak after warmup (no scaling rule), and the poly decay
  ends at 1e-4 with power 2.

  References:
    MLPerf Training v0.7 results, Google, resnet_jax train.py.
  """
  if batch < 16384:
    row = (10.0, 5.0, 56.0, 0.9, 2e-4)
  elif batch < 32768:
    row = (25.0, 5.0, 56.0, 0.9, 2e-4)
  elif batch < 65536:
    row = (29.0, 18.0, 64.0, 0.929, 1e-4)
  else:
    row = (23.080977304670448, 33.0, 92.0, 0.9537213777059405, 1e-4)
  return dict(zip(("learning_rate", "warmup_epochs", "epochs", "momentum",
                   "weight_decay"), row))


def goyal_schedule(epochs: float) -> dict:
  """5-epoch warmup, x0.1 at epochs 30/60/80 of 90, scaled to the budget."""
  return dict(name="multistep", warmup_epochs=5.0, decay_factor=0.1,
              decay_epochs=[epochs * 30 / 90, epochs * 60 / 90, epochs * 80 / 90])


def lamb_warmup_epochs(batch: int, epochs: float) -> float:
  """LEGW: 5 epochs up to 16K, then proportional to the batch, at most 40%
  of the run (INFERENCE: You et al. 2019 use warmup growing with B)."""
  return min(5.0 * max(1.0, batch / 16384), 0.4 * epochs)


def optimizer_point(name: str, batch: int, epochs: float):
  """(optimizer section, schedule section, label smoothing, epochs) of a point."""
  goyal = dict(base_batch_size=REFERENCE_BATCH, weight_decay=1e-4)
  if name == "lars":
    table = mlperf_lars(batch)
    epochs = epochs or table["epochs"]
    opt = dict(learning_rate=table["learning_rate"], scaling="none",
               momentum=table["momentum"], weight_decay=table["weight_decay"],
               trust_coefficient=0.001, eps=0.0)
    schedule = dict(name="poly", warmup_epochs=table["warmup_epochs"],
                    end_learning_rate=1e-4, power=2.0)
    return opt, schedule, 0.1, epochs
  if name == "lamb":
    epochs = epochs or 90.0
    opt = dict(learning_rate=4e-3, scaling="sqrt", base_batch_size=REFERENCE_BATCH,
               weight_decay=0.01)
    schedule = dict(name="poly", warmup_epochs=lamb_warmup_epochs(batch, epochs),
                    end_learning_rate=0.0, power=2.0)
    return opt, schedule, 0.0, epochs
  epochs = epochs or 90.0
  rates = {  # base LR at B0 and scaling rule (Goyal: linear; adaptive: sqrt).
      "momentum": dict(learning_rate=0.1, scaling="linear", momentum=0.9, **goyal),
      "nesterov": dict(learning_rate=0.1, scaling="linear", momentum=0.9, **goyal),
      "adam": dict(learning_rate=1e-3, scaling="sqrt", base_batch_size=REFERENCE_BATCH),
      "adamw": dict(learning_rate=1e-3, scaling="sqrt", base_batch_size=REFERENCE_BATCH,
                    weight_decay=0.05),
      "adagrad": dict(learning_rate=0.01, scaling="sqrt", base_batch_size=REFERENCE_BATCH),
      "rmsprop": dict(learning_rate=1e-3, scaling="sqrt", base_batch_size=REFERENCE_BATCH),
  }
  if name not in rates:
    raise ConfigError("config argument 'optimizer'", name,
                      f"one of {', '.join(sorted(list(rates) + ['lamb', 'lars']))}")
  return rates[name], goyal_schedule(epochs), 0.0, epochs


def machine_point(point, batch: int, mib_per_example: float,
                  num_eval: int) -> tuple:
  """(microbatch plan, eval batch) of a point on its slice."""
  per_device = examples_per_device(point.tpu, point.mem_gib, mib_per_example)
  if point.micro:
    if point.micro % point.chips:
      raise ConfigError("config argument 'micro'", point.micro,
                        f"a multiple of chips ({point.chips})")
    count = math.ceil(batch / point.micro)
    plan = MicrobatchPlan(point.micro // point.chips, point.micro, count,
                          point.micro * count != batch)
  else:
    plan = microbatch_plan(batch, point.chips, per_device)
  # Evaluation keeps no activations for a backward pass: the training size
  # per device is safe, capped so that a batch is not mostly padding.
  eval_per_device = min(per_device, math.ceil(num_eval / point.chips))
  return plan, eval_per_device * point.chips


def check_point(point, num_train: int) -> None:
  """The batch and dtype of a point, before anything is derived from them."""
  if not 0 < point.batch <= num_train:
    raise ConfigError("config argument 'batch'", point.batch,
                      f"an integer in [1, {num_train}] (the full training set)")
  if point.dtype not in DTYPE_BYTES:
    raise ConfigError("config argument 'dtype'", point.dtype,
                      f"one of {', '.join(DTYPE_BYTES)}")


def run_config(point, *, dataset: dict, model: dict, plan: MicrobatchPlan,
               eval_batch: int, optimizer: dict, schedule: dict, epochs: float,
               label_smoothing: float, steps_per_epoch: int) -> ml_collections.ConfigDict:
  """The run config of a pod point; shared by the ImageNet and CIFAR configs."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = dataset
  config.model = model
  config.batch_size = point.batch
  # 0 = one pass over the batch (padded to the devices when it must be).
  config.microbatch_size = plan.microbatch if plan.num_microbatches > 1 else 0
  config.eval_batch_size = eval_batch
  config.num_epochs = epochs
  config.num_train_steps = 0
  config.optimizer = dict(name=point.optimizer,
                          **optim.default_hyperparameters(point.optimizer))
  config.optimizer.update(optimizer)
  config.schedule = schedule
  config.loss = dict(label_smoothing=label_smoothing)
  # BN statistics over the whole microbatch, all devices together
  # (cross-replica, as MLPerf's groups of >= 64 examples); g > 0: ghost batches.
  config.bn = dict(ghost_size=0)
  config.log_every_steps = min(100, steps_per_epoch)
  config.eval_every_steps = 0
  config.checkpoint_every_steps = min(1000, steps_per_epoch)
  config.checkpoint_keep = 2
  # True: a batch of one microbatch runs as two halves, so that the gradient
  # noise scale is measured (metrics.jsonl's b_simple); see README.
  config.noise_scale_split = False
  return config


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  point = parse_point(arg, optimizer="lars", batch=32768, epochs=0.0, tpu="v3",
                      chips=8, mem_gib=0.0, micro=0, dtype="bfloat16")
  check_point(point, NUM_TRAIN)
  opt, schedule, smoothing, epochs = optimizer_point(point.optimizer, point.batch,
                                                     point.epochs)
  plan, eval_batch = machine_point(
      point, point.batch, ACTIVATION_MIB_PER_BYTE * DTYPE_BYTES[point.dtype], NUM_EVAL)
  return run_config(
      point, plan=plan, eval_batch=eval_batch, optimizer=opt, schedule=schedule,
      epochs=epochs, label_smoothing=smoothing,
      steps_per_epoch=max(1, NUM_TRAIN // point.batch),
      dataset=dict(name="imagenet2012", data_dir="", cache=False, validation_examples=0,
                   image_size=0),  # 0 = the native 224; small for CPU tests.
      model=dict(name="resnet50", dtype=point.dtype, zero_init_residual=True))
