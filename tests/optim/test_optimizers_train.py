"""Every optimizer trains the default Fashion-MNIST point without diverging."""

import numpy as np
import pytest

from lbt.io import metrics
from lbt import optim
from lbt.engine import train

# The optimizers that log per-layer trust ratios.
TRUST_RATIO_OPTIMIZERS = ("lars", "lamb", "lans", "clars", "vr_lars", "vr_lamb")


@pytest.mark.parametrize("name", optim.OPTIMIZERS.names())
def test_optimizer_trains_the_default_point(make_config, tmp_path, name):
  config = make_config(name, num_train_steps=40, schedule__warmup_epochs=0.04,
                       log_every_steps=10, eval_batch_size=5000)
  summary = train.train_and_evaluate(config, str(tmp_path))
  records = metrics.read_jsonl(str(tmp_path), "train")
  losses = np.array([r["loss"] for r in records])
  assert np.isfinite(losses).all()
  assert losses[-10:].mean() < 0.75 * losses[:3].mean(), losses
  assert summary["eval_accuracy"] > 0.6, summary
  # Trust ratios are full diagnostics: written every log_every_steps updates.
  logged = [r for r in records if "trust_ratio_mean" in r]
  if name in TRUST_RATIO_OPTIMIZERS:
    assert len(logged) >= len(records) // 10
    ratios = [(r["trust_ratio_min"], r["trust_ratio_mean"], r["trust_ratio_max"])
              for r in logged]
    assert all(0 < lo <= mean <= hi for lo, mean, hi in ratios)
  else:
    assert not logged
