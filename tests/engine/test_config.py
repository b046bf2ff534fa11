"""Configs: every point of the study is valid, and every key is one lbt reads."""

import pytest

from configs import fashion_mnist
from lbt.engine import config as config_lib
from lbt.engine import schema
from lbt import optim
from lbt.errors import ConfigError


@pytest.mark.parametrize("name", optim.OPTIMIZERS.names())
@pytest.mark.parametrize("batch,micro", [(128, 0), (8192, 0), (60000, 2000)])
def test_every_point_of_the_study_validates(name, batch, micro):
  config = fashion_mnist.get_config(f"{name},batch={batch},micro={micro}")
  config_lib.validate(config, num_devices=8)
  assert config.batch_size == batch
  steps_per_epoch = 60000 // batch
  assert config_lib.num_train_steps(config, steps_per_epoch) == round(
      config.num_epochs * steps_per_epoch)


@pytest.mark.parametrize("model", sorted(fashion_mnist.MODEL_SETTINGS))
def test_every_model_point_validates(model):
  config_lib.validate(fashion_mnist.get_config(f"momentum,model={model}"), num_devices=8)


def test_validation_hold_out_is_optional_and_shrinks_the_training_set():
  from lbt import data
  spec = data.DATASETS.get("fashion_mnist")
  config = fashion_mnist.get_config("lars,batch=50000,micro=5000")
  config.dataset.validation_examples = 10000
  config_lib.validate(config, num_devices=8)
  assert config_lib.num_train_examples(config, spec) == 50000
  with config.unlocked():  # configs written before the fields existed
    del config.dataset["validation_examples"], config.dataset["image_size"]
  config_lib.validate(config, num_devices=8)
  assert config_lib.num_train_examples(config, spec) == 60000


def test_full_batch_has_one_update_per_epoch():
  config = fashion_mnist.get_config("lars,batch=60000,micro=6000,epochs=30")
  assert config_lib.num_train_steps(config, 60000 // config.batch_size) == 30


@pytest.mark.parametrize("section,key", [(None, "learning_rate"), ("dataset", "shuffled"),
                                         ("bn", "momentum"), ("loss", "weight")])
def test_a_key_no_code_reads_is_refused(section, key):
  config = fashion_mnist.get_config()
  with config.unlocked():
    (config if section is None else config[section])[key] = 1
  field = key if section is None else f"{section}.{key}"
  with pytest.raises(ConfigError, match=f"^{field}=1 is invalid: not a field lbt reads"):
    config_lib.validate(config, num_devices=8)


def test_point_arguments_are_typed():
  point = config_lib.parse_point("lamb,batch=4096,epochs=2.5", optimizer="sgd",
                                 batch=1, epochs=1.0)
  assert (point.optimizer, point.batch, point.epochs) == ("lamb", 4096, 2.5)
  with pytest.raises(ConfigError, match="allowed keys: batch, epochs, optimizer"):
    config_lib.parse_point("sgd,bach=3", optimizer="sgd", batch=1, epochs=1.0)


def test_changed_fields_are_named_by_their_dotted_path():
  old = {"a": 1, "b": {"c": 2, "d": 3}}
  new = {"a": 1, "b": {"c": 5, "d": 3}, "e": 0}
  assert config_lib.changed_fields(old, new) == ["b.c", "e"]


# (batch, the microbatch the rule gives): the fewest microbatches >= 8 whose size
# is a multiple of 8 (60000 = 10 x 6000: 7500 is not a multiple of 8), then >= 2.
@pytest.mark.parametrize("batch,micro", [(256, 32), (128, 16), (8192, 1024),
                                         (60000, 6000), (16, 8), (40, 8), (8, 0)])
def test_gsnr_points_get_at_least_two_microbatches(batch, micro):
  assert fashion_mnist.default_microbatch("vr_lamb", batch) == micro
  if micro:
    assert batch % micro == 0 and micro % 8 == 0 and batch // micro >= 2
  config = fashion_mnist.get_config(f"vr_sgd,batch={batch}")
  if micro:
    config_lib.validate(config, num_devices=8)
  else:  # One 8-example batch cannot give two microbatches on 8 devices.
    with pytest.raises(ConfigError, match="^microbatch_size=0 is invalid: at most "
                       "batch_size / 2 .4. and a divisor of it: vr_sgd estimates"):
      config_lib.validate(config, num_devices=8)


@pytest.mark.parametrize("batch,micro", [(64, 0), (256, 64), (8192, 64), (60000, 48)])
def test_clars_microbatch_bounds_per_example_memory_and_has_no_warmup(batch, micro):
  config = fashion_mnist.get_config(f"clars,batch={batch}")
  assert config.microbatch_size == micro
  assert config.schedule.warmup_epochs == 0
  assert fashion_mnist.get_config(f"lars,batch={batch}").schedule.warmup_epochs == 1
  config_lib.validate(config, num_devices=8)
  # An explicit microbatch is kept.
  assert fashion_mnist.get_config(f"clars,batch={batch},micro=8").microbatch_size == 8


def test_vr_optimizers_are_their_base_plus_the_gsnr_band():
  for base in ("sgd", "momentum", "lars", "adam", "lamb"):
    vr = fashion_mnist.optimizer_point(f"vr_{base}").to_dict()
    plain = fashion_mnist.optimizer_point(base).to_dict()
    extra = {k: vr.pop(k) for k in set(vr) - set(plain)}
    assert extra == dict(gamma_low=0.1, gamma_high=1.0,
                         **(dict(b3=0.9) if base in ("adam", "lamb") else {}))
    assert vr == dict(plain, name=f"vr_{base}")


def test_adversarial_section_is_validated_and_optional():
  config = fashion_mnist.get_config()
  assert config.loss.adversarial.enabled is False
  config.loss.adversarial.enabled = True
  config_lib.validate(config, num_devices=8)
  config.loss.adversarial.weight = 1.5
  with pytest.raises(ConfigError, match=r"^loss.adversarial.weight=1.5 is invalid"):
    config_lib.validate(config, num_devices=8)
  with config.unlocked():  # configs without the section: no adversarial loss.
    del config.loss["adversarial"]
  config_lib.validate(config, num_devices=8)


def _leaves(fields, prefix=""):
  """Every field of the schema by dotted name, sections' fields included."""
  for key, field in fields.items():
    yield prefix + key, field
    if isinstance(field, schema.Section) and field.fields:
      yield from _leaves(field.fields, f"{prefix}{key}.")


def test_every_benchmark_sets_the_required_fields_of_the_schema():
  from configs import cifar10_resnet, imagenet_resnet50
  fields = dict(_leaves(schema.SCHEMA))
  for benchmark in (fashion_mnist, cifar10_resnet, imagenet_resnet50):
    config = benchmark.get_config()
    for name, field in fields.items():
      parent, _, key = name.rpartition(".")
      if field.default is schema.REQUIRED and (not parent or parent in config):
        assert key in (config[parent] if parent else config), (
            f"{benchmark.__name__} leaves out the required {name}")


# A field left out, and what its absence means, as the reader of it sees it.
ABSENT_MEANS = [
    ("noise_scale_split", False, lambda config, facts: facts.noise_scale_split),
    ("batch_schedule", {"name": "constant"}, lambda config, facts: facts.batch_schedule),
    ("stop_at_target", None, lambda config, facts: facts.stop_at_target),
    ("dataset.validation_examples", 0, lambda config, facts: facts.train_examples - 60000),
    ("dataset.image_size", 0, lambda c, f: config_lib.dataset_field(c, "image_size")),
    ("dataset.shuffle", True, lambda c, f: config_lib.dataset_field(c, "shuffle")),
]


@pytest.mark.parametrize("field,meaning,read", ABSENT_MEANS)
def test_a_field_left_out_means_the_default_the_schema_documents(field, meaning, read):
  parent, _, key = field.rpartition(".")
  config = fashion_mnist.get_config()
  node = config[parent] if parent else config
  with config.unlocked():
    if key in node:
      del node[key]
  assert read(config, config_lib.validate(config, num_devices=8)) == meaning
  fields = schema.SCHEMA[parent].fields if parent else schema.SCHEMA
  assert fields[key].default == meaning


def test_a_required_field_left_out_is_refused_naming_it():
  config = fashion_mnist.get_config()
  with config.unlocked():
    del config["checkpoint_keep"]
  with pytest.raises(ConfigError, match="^checkpoint_keep=None is invalid: a field every "
                     "config must have"):
    config_lib.validate(config, num_devices=8)
