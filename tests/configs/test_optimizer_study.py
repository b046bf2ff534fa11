"""The optimizer study: every optimizer lbt has, at three batches, each LR-tuned."""

import ml_collections
import pytest

from configs.studies import fashion_mnist_optimizers as study_file
from lbt.engine import config as config_lib
from lbt import optim
from lbt.studies import points as points_lib
from lbt.studies import directory
from lbt.errors import ConfigError


def test_every_optimizer_at_three_batches_with_a_validated_lr_grid():
  points = study_file.get_study()
  names = optim.OPTIMIZERS.names()
  assert {"lans", "clars", "vr_sgd", "vr_momentum", "vr_lars", "vr_adam",
          "vr_lamb"} <= set(names) and len(names) == 16
  assert len(points) == len(names) * (1 + 3 + 3)
  grids = {}
  for name, (config, role, _) in points_lib.study_points(points).items():
    assert directory.NAME.match(name), name
    config_lib.validate(config, num_devices=8)
    grids.setdefault(role["cell"], []).append(config)
    # Every point is a trial of a tuned cell of the sweep, its role its config's.
    assert role == {"section": "sweep", "cell": f"{config.optimizer.name}-b"
                    f"{config.batch_size}-tuned", "optimizer": config.optimizer.name,
                    "batch": config.batch_size,
                    "learning_rate": config.optimizer.learning_rate}
    assert config.dataset.validation_examples == 10000
    # The default study's model and budget.
    assert (config.model.name, tuple(config.model.hidden_sizes)) == ("mlp", (128, 128))
    assert config.num_epochs == 3.0
  assert sorted(grids) == sorted(f"{o}-b{b}-tuned" for o in names
                                 for b in (256, 8192, 50000))
  for grid, members in grids.items():
    lrs = sorted(c.optimizer.learning_rate for c in members)
    if grid.endswith("-b256-tuned"):  # the reference batch: the default LR only
      assert len(lrs) == 1
      continue
    # x0.5, x1, x2 of the optimizer's base LR; members differ only in it.
    assert len(lrs) == 3
    assert lrs[0] * 2 == pytest.approx(lrs[1]) and lrs[1] * 2 == pytest.approx(lrs[2])
    plain = [dict(c.to_dict(), optimizer=dict(c.optimizer.to_dict(), learning_rate=0))
             for c in members]
    assert all(p == plain[0] for p in plain), grid
  # The full batch is the whole training set after the hold-out: one update an epoch.
  full = points["lamb-b50000-tuned-lr0.004"].config
  assert config_lib.num_train_steps(full, 50000 // full.batch_size) == 3
  clars = next(p.config for p in points.values()
               if p.role["cell"] == "clars-b50000-tuned")
  assert clars.schedule.warmup_epochs == 0 and clars.microbatch_size == 40


def test_quick_is_three_points_of_the_study():
  quick = study_file.get_study("quick")
  whole = study_file.get_study()
  assert len(quick) == 3
  for name, (config, role, _) in quick.items():
    assert isinstance(config, ml_collections.ConfigDict)
    assert config.to_dict() == whole[name].config.to_dict()
    assert role == whole[name].role
  with pytest.raises(ConfigError, match="^--study argument='slow' is invalid"):
    study_file.get_study("slow")
