"""The limit of the batch size on ImageNet: every optimizer at every batch size.

  python -m lbt.study --study=configs/studies/imagenet_limit.py:lars+lamb,tpu=v4,chips=512 \\
    --workdir=gs://BUCKET/imagenet_limit

One point per (optimizer, batch), named like `lars-b819200`, each the config of
`configs/imagenet_resnet50.py` for that point on the given slice. The argument
picks the optimizers ("+"-separated first word; default the comparison of You
et al. 2020), the batch sizes (`batches`, "+"-separated; default 1K to
819,200 and the full 1,281,167, that paper's range) and the machine (`tpu`, `chips`,
`mem_gib`), which changes only the microbatch of each point.
"""

from typing import Dict

from configs import imagenet_resnet50
from lbt.engine.config import parse_point
from lbt.errors import ConfigError
from lbt.studies import points as points_lib

# Momentum SGD (Goyal's baseline), Nesterov, the adaptive family with Goyal's
# schedule added, and the layer-wise LARS and LAMB (You et al. 2020).
OPTIMIZERS = ("momentum", "nesterov", "adam", "adamw", "adagrad", "lars", "lamb")


def point_name(optimizer: str, batch: int) -> str:
  return f"{optimizer}-b{batch}"


def split_list(field: str, raw: str, allowed) -> list:
  """"a+b" -> [a, b], each checked against `allowed` (strings or ints)."""
  kind = type(next(iter(allowed)))
  items = []
  for token in filter(None, raw.split("+")):
    try:
      value = kind(token)
    except ValueError:
      value = None
    if value not in allowed:
      raise ConfigError(f"study argument {field!r}", token,
                        f"'+'-separated values from {', '.join(map(str, allowed))}")
    items.append(value)
  return items


def get_study(arg: str = None) -> Dict[str, points_lib.Point]:
  study = parse_point(arg, optimizer="+".join(OPTIMIZERS), batches="", tpu="v3",
                      chips=8, mem_gib=0.0)
  optimizers = split_list("optimizer", study.optimizer, OPTIMIZERS)
  batches = (split_list("batches", study.batches, imagenet_resnet50.BATCH_SIZES)
             if study.batches else list(imagenet_resnet50.BATCH_SIZES))
  machine = f"tpu={study.tpu},chips={study.chips},mem_gib={study.mem_gib}"
  # Each point is a cell of the batch sweep, the report's accuracy table.
  return {point_name(opt, batch): points_lib.point(
      imagenet_resnet50.get_config(f"{opt},batch={batch},{machine}"), "sweep",
      cell=point_name(opt, batch)) for opt in optimizers for batch in batches}
