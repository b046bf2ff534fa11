"""Examples per second of the input pipeline alone, against what the step eats.

  python benchmarks/input_pipeline.py [--microbatches=40]

Fashion-MNIST: lbt's real pipeline (`lbt.engine.train.create_pipeline` on the decoded
split, grain's reader threads, normalization to float32) is drained on its own
for a number of microbatches, and compared with the examples/s of LeNet-5's and
the MLP's compiled one-shot step at the same batch. Goal: pipeline >= 3x the
step.

ImageNet at 224^2: the decode and the training transform of one image
(`lbt.data.augment.imagenet_train`, an Inception crop resized to 224 and a
flip, through `augment.train_batch`) timed on synthetic photographs of
ImageNet's median size (500 x 375) encoded as JPEG at quality 90, one thread.
The table gives images/s per thread and the threads a host would need to feed
3x a given step rate; a 2-core CPU cannot train ResNet-50 at 224^2 fast enough
for this to bind, an accelerator host can.
"""

import argparse
import io
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks import roofline, timing  # noqa: E402
from configs import fashion_mnist  # noqa: E402
from lbt.engine import batch_schedule, parallel, train
from lbt.engine import config as config_lib
from lbt.data import augment  # noqa: E402
from lbt.data.catalog import DATASETS  # noqa: E402

BATCHES = (256, 4096)
# Step rates (images/s) an accelerator host may consume at ResNet-50 224^2.
FEED_RATES = (1000, 3000)


def pipeline_rate(batch_size: int, microbatches: int) -> float:
  """Examples/s of draining lbt's Fashion-MNIST train iterator."""
  config = fashion_mnist.get_config(f"momentum,batch={batch_size}")
  facts = config_lib.validate(config, num_devices=jax.device_count())
  pipeline = train.create_pipeline(config, facts, parallel.create_mesh())
  stream = pipeline.train_stream(batch_schedule.constant_plan(
      batch_size, len(pipeline.train_batches.pool), microbatches + 2))

  def next_batch():
    stream.next_update()
    return next(stream)

  for _ in range(2):  # grain starts its threads and fills its buffer
    next_batch()
  start = time.perf_counter()
  examples = sum(len(next_batch()["label"]) for _ in range(microbatches))
  return examples / (time.perf_counter() - start)


def step_rate(name: str, batch_size: int, rounds: int = 3) -> float:
  fn, state, batch = roofline.compiled_step(name, batch_size, 28, 1)
  params_init = jax.tree.map(lambda p: p + 0, state.params)
  seconds = timing.interleaved({"step": roofline.runner(fn, state, batch, params_init)},
                               rounds)["step"]
  return batch_size / seconds


def synthetic_jpegs(count: int, seed: int = 0):
  """JPEG bytes of smooth random photographs, 500 x 375 (ImageNet's median)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((500, 375), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


def imagenet_rates(count: int = 64) -> dict:
  """Images/s of one thread: decode only, augment only, both."""
  spec = DATASETS.get("imagenet2012")
  jpegs = synthetic_jpegs(count)
  start = time.perf_counter()
  images = [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]
  decode = time.perf_counter() - start
  start = time.perf_counter()
  augment.train_batch(images, np.arange(count), spec.train_transform, 224, seed=0, update=0)
  transform = time.perf_counter() - start
  return {"decode": count / decode, "augment": count / transform,
          "both": count / (decode + transform)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--microbatches", type=int, default=40)
  args = parser.parse_args()
  print(f"input pipeline: {timing.machine()}")
  print("| dataset | batch | pipeline examples/s | lenet5 step examples/s | "
        "mlp step examples/s | pipeline / fastest step |")
  print("|---|---|---|---|---|---|")
  for batch_size in BATCHES:
    count = max(4, args.microbatches * 256 // batch_size)
    feed = pipeline_rate(batch_size, count)
    lenet, mlp = step_rate("lenet5", batch_size), step_rate("mlp", batch_size)
    print(f"| fashion_mnist | {batch_size} | {feed:,.0f} | {lenet:,.0f} | {mlp:,.0f} | "
          f"{feed / max(lenet, mlp):.1f} |", flush=True)
  rates = imagenet_rates()
  print("\nImageNet 224^2 training input, one thread, synthetic 500x375 JPEGs")
  print("| stage | images/s per thread | " + " | ".join(
      f"threads for 3 x {r:,} img/s" for r in FEED_RATES) + " |")
  print("|---|---|" + "---|" * len(FEED_RATES))
  for stage in ("decode", "augment", "both"):
    need = " | ".join(f"{3 * r / rates[stage]:.0f}" for r in FEED_RATES)
    print(f"| {stage} | {rates[stage]:.0f} | {need} |")


if __name__ == "__main__":
  main()
