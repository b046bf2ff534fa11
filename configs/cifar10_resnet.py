"""CIFAR-10 / CIFAR ResNets (20, 32, 56): batch sizes from 128 to the full 50,000.

  python -m lbt.main --workdir=DIR \\
    --config=configs/cifar10_resnet.py:lars,batch=50000,model=resnet56,tpu=v3,chips=32

The argument picks the point as in configs/imagenet_resnet50.py: optimizer,
`batch`, `model`, `epochs` (0 = the optimizer's budget), and the machine
(`tpu`, `chips` = JAX devices, `mem_gib`, `micro`, `dtype`), which changes only
the microbatch. Training augmentation is the pad-4 random crop and flip of He
et al. (lbt.data.augment.cifar_train).

Hyperparameters, at the reference batch B0 = 128 of He et al. 2016:
- momentum / nesterov: lr 0.1 scaled linearly (Goyal et al.), momentum 0.9,
  weight decay 1e-4 (none on BN and biases), 160 epochs with x0.1 at epochs 80
  and 120 (He et al.'s 32k/48k of 64k iterations at B = 128, rounded), and a
  5-epoch warmup (Goyal et al.) so that large batches start stably.
- lars, lamb: sqrt scaling, poly decay power 2, warmup growing with the batch
  (LEGW, capped at 40% of the run). INFERENCE: the papers give no CIFAR values
  of these; LARS uses the LARS paper's trust coefficient 0.001.
- adam, adamw, adagrad, rmsprop: sqrt scaling and the momentum schedule.
"""

import ml_collections

from configs import imagenet_resnet50 as imagenet
from lbt.engine.config import parse_point
from lbt.errors import ConfigError

NUM_TRAIN = 50_000
NUM_EVAL = 10_000
REFERENCE_BATCH = 128
BATCH_SIZES = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, NUM_TRAIN)
EPOCHS = 160.0
# Blocks per stage (ResNet-6n+2) of each model.
MODELS = {"resnet20": 3, "resnet32": 5, "resnet56": 9}


def mib_per_example(model: str, dtype: str) -> float:
  """Memory one 32 x 32 example keeps for the backward pass.

  The conv outputs of a CIFAR ResNet with n blocks per stage sum to
  32*32*16 + 2n * (32*32*16 + 16*16*32 + 8*8*64) = 16,384 + 57,344 n values;
  with the BN and ReLU outputs kept after fusion (~2.5 per conv output, as for
  ResNet-50 in configs/imagenet_resnet50.py): ResNet-56 in float32 ~5 MiB.
  """
  values = 2.5 * (16384 + 57344 * MODELS[model])
  return values * imagenet.DTYPE_BYTES[dtype] / 2**20


def optimizer_point(name: str, batch: int, epochs: float):
  """(optimizer section, schedule section, epochs) of a point."""
  epochs = epochs or EPOCHS
  step = dict(name="multistep", warmup_epochs=5.0, decay_factor=0.1,
              decay_epochs=[epochs * 80 / 160, epochs * 120 / 160])
  poly = dict(name="poly", warmup_epochs=min(5.0 * max(1.0, batch / 4096), 0.4 * epochs),
              end_learning_rate=0.0, power=2.0)
  b0 = dict(base_batch_size=REFERENCE_BATCH)
  table = {
      "momentum": (dict(learning_rate=0.1, scaling="linear", momentum=0.9,
                        weight_decay=1e-4, **b0), step),
      "nesterov": (dict(learning_rate=0.1, scaling="linear", momentum=0.9,
                        weight_decay=1e-4, **b0), step),
      "lars": (dict(learning_rate=1.0, scaling="sqrt", momentum=0.9, weight_decay=5e-4,
                    trust_coefficient=0.001, **b0), poly),
      "lamb": (dict(learning_rate=4e-3, scaling="sqrt", weight_decay=0.01, **b0), poly),
      "adam": (dict(learning_rate=1e-3, scaling="sqrt", **b0), step),
      "adamw": (dict(learning_rate=1e-3, scaling="sqrt", weight_decay=0.05, **b0), step),
      "adagrad": (dict(learning_rate=0.01, scaling="sqrt", **b0), step),
      "rmsprop": (dict(learning_rate=1e-3, scaling="sqrt", **b0), step),
  }
  if name not in table:
    raise ConfigError("config argument 'optimizer'", name, f"one of {', '.join(sorted(table))}")
  opt, schedule = table[name]
  return opt, schedule, epochs


def get_config(arg: str = None) -> ml_collections.ConfigDict:
  point = parse_point(arg, optimizer="momentum", batch=128, epochs=0.0, model="resnet20",
                      tpu="v3", chips=8, mem_gib=0.0, micro=0, dtype="float32")
  imagenet.check_point(point, NUM_TRAIN)
  if point.model not in MODELS:
    raise ConfigError("config argument 'model'", point.model, f"one of {', '.join(MODELS)}")
  opt, schedule, epochs = optimizer_point(point.optimizer, point.batch, point.epochs)
  plan, eval_batch = imagenet.machine_point(
      point, point.batch, mib_per_example(point.model, point.dtype), NUM_EVAL)
  return imagenet.run_config(
      point, plan=plan, eval_batch=eval_batch, optimizer=opt, schedule=schedule,
      epochs=epochs, label_smoothing=0.0,
      steps_per_epoch=max(1, NUM_TRAIN // point.batch),
      dataset=dict(name="cifar10", data_dir="", cache=True,  # 180 MB decoded
                   validation_examples=0, image_size=0),
      model=dict(name=point.model, dtype=point.dtype, zero_init_residual=True))
