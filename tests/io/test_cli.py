"""lbt.io.cli: Python config files, typed overrides, exit statuses, private flags."""

import textwrap

from absl import flags
import ml_collections
import pytest

from lbt.io import cli
from lbt.errors import ConfigError


def _file(tmp_path, body: str) -> str:
  path = tmp_path / "some_file.py"
  path.write_text(textwrap.dedent(body))
  return str(path)


def test_load_python_file_passes_the_argument_after_the_colon(tmp_path):
  path = _file(tmp_path, """\
      from configs import fashion_mnist  # the repository root is importable

      def get_study(arg="default"):
        return {"arg": arg, "batch": fashion_mnist.get_config("lars,batch=512").batch_size}
      """)
  load = lambda spec: cli.load_python_file(spec, flag="--study", function="get_study")
  assert load(path) == {"arg": "default", "batch": 512}  # no ':': get_study()
  assert load(f"{path}:quick,x=1") == {"arg": "quick,x=1", "batch": 512}
  assert load(f"{path}:") == {"arg": "", "batch": 512}


@pytest.mark.parametrize("body,spec_suffix,expected", [
    ("def get_config(arg=None):\n  return 1 / 0\n", "", "ZeroDivisionError"),
    ("import no_such_module_lbt\n", "", "ModuleNotFoundError"),
    ("x = 1\n", "", "defines get_config"),
    ("def get_config(arg=None):\n  return {}[arg]\n", ":key", "KeyError: 'key'"),
])
def test_load_python_file_failures_name_flag_and_spec(tmp_path, body, spec_suffix, expected):
  spec = _file(tmp_path, body) + spec_suffix
  with pytest.raises(ConfigError) as e:
    cli.load_python_file(spec)
  assert e.value.field == "--config" and e.value.value == spec
  assert expected in str(e.value) and "\n" not in str(e.value)


def test_load_python_file_keeps_the_files_own_config_error(tmp_path):
  path = _file(tmp_path, """\
      from lbt.errors import ConfigError

      def get_config(arg=None):
        raise ConfigError("config argument 'batch'", arg, "an integer")
      """)
  with pytest.raises(ConfigError, match=r"^config argument 'batch'='x' is invalid"):
    cli.load_python_file(path + ":x")
  with pytest.raises(ConfigError, match="no file"):
    cli.load_python_file(str(tmp_path / "missing.py"), flag="--study")


def _config():
  config = ml_collections.ConfigDict(dict(
      batch_size=256, num_epochs=6.0, name="lars", cache=True, nothing=None,
      model=dict(hidden_sizes=(512, 512), decay_epochs=[30, 60])))
  config.lock()
  return config


def test_overrides_take_the_type_of_their_field():
  config = _config()
  cli.apply_overrides(config, [
      "--config.batch_size=512", "--config.num_epochs=3", "--config.name=lamb",
      "--config.cache=False", "--config.nothing=[1, 2]",
      "--config.model.hidden_sizes=256,128", "--config.model.decay_epochs=(10,)",
      "--config.batch_size=1024"])  # the last of two wins
  assert (config.batch_size, config.num_epochs, config.name, config.cache) == (
      1024, 3.0, "lamb", False)
  assert isinstance(config.num_epochs, float) and config.nothing == [1, 2]
  assert config.model.hidden_sizes == (256, 128) and config.model.decay_epochs == [10]


@pytest.mark.parametrize("override,field,allowed", [
    ("--config.batch_size=1.5", "--config.batch_size", "of type int"),
    ("--config.num_epochs=six", "--config.num_epochs", "of type float"),
    ("--config.cache=yes", "--config.cache", "a boolean"),
    ("--config.model.hidden_sizes=(1,", "--config.model.hidden_sizes", "tuple literal"),
    ("--config.model.width=2", "--config.model.width",
     "not a field of config.model; its fields are: decay_epochs, hidden_sizes"),
    ("--config.optimizer.name=sgd", "--config.optimizer.name", "not a field of config;"),
    ("--config.model=x", "--config.model", "a value for a field of this section"),
    ("--config.batch_size", "--config.batch_size", "a value: --config.batch_size=VALUE"),
])
def test_bad_overrides_are_one_config_error(override, field, allowed):
  with pytest.raises(ConfigError) as e:
    cli.apply_overrides(_config(), [override])
  assert e.value.field == field and allowed in str(e.value)


def _raise(error):
  def command():
    raise error
  return command


def test_run_maps_each_outcome_to_its_exit_status(capsys):
  from lbt.engine import checkpoint
  from lbt import errors
  cases = [
      (lambda: None, 0, ""),
      (_raise(ConfigError("batch_size", 3, "a multiple of 8")), 2,
       "lbt: error: batch_size=3 is invalid: a multiple of 8\n"),
      (_raise(errors.Diverged(7, float("nan"), 1.0, 0.5, None)), 3,
       "lbt: training diverged at update 7"),
      (_raise(checkpoint.CheckpointSaveError(6, "/w/checkpoints", "No space left on device",
                                             4)), 4,
       "lbt: error: could not write the checkpoint of update 6 (/w/checkpoints): No space "
       "left on device; the last complete checkpoint is update 4\n"),
      (_raise(errors.WriteError("/w/metrics.jsonl", "Read-only file system (EROFS)")), 4,
       "lbt: error: could not write /w/metrics.jsonl"),
      (_raise(KeyboardInterrupt()), 130, "lbt: interrupted; rerun the same command"),
      (_raise(errors.Preempted("SIGTERM: saved update 5")), 143,
       "lbt: SIGTERM: saved update 5; rerun the same command to resume.\n"),
  ]
  for command, status, line in cases:
    assert cli.run(command) == status
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == (1 if line else 0), err
  with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
    cli.run(lambda: 1 / 0)


def test_entry_points_own_their_flags():
  from lbt import main  # pylint: disable=g-import-not-at-top
  assert "workdir" in main.FLAGS and "workdir" not in flags.FLAGS
  other = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "another command's flag", flag_values=other)
  flags.DEFINE_integer("shards", 1, "an int flag", flag_values=other)
  for _ in range(2):  # parsing is repeatable
    assert cli.parse_flags(other, ["x", "--workdir=a", "--config.seed=1"],
                           program="x") == ["--config.seed=1"]
    assert other.workdir == "a" and other.shards == 1
  with pytest.raises(ConfigError, match=r"^--shards='two' is invalid: a value of type int"):
    cli.parse_flags(other, ["x", "--shards=two"], program="x")
  with pytest.raises(ConfigError, match="not a flag of x; .*did you mean --shards"):
    cli.parse_flags(other, ["x", "--shard=2"], program="x")
  with pytest.raises(ConfigError, match=r"^arguments=\['stray'\] is invalid"):
    cli.parse_flags(other, ["x", "stray"], program="x")
