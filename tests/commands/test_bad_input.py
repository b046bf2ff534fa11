"""Bad input of every kind ends with one line and exit status 2, before compute.

Each row of the table below is one malformed input: a config argument, a
`--config.x` override, a config file, a CLI flag, a data directory or a workdir
written by another config. `lbt.main.run` must return 2 and print exactly one
line `lbt: error: ...` naming the field, the value and what is allowed, with no
traceback, and without starting compute: the workdir is not even created, and
the data pipeline, the checkpoint manager and config.json are never reached
(guards below fail the test if they are).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from lbt import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = "--config=configs/fashion_mnist.py"


class ComputeStarted(AssertionError):
  """Raised by the guards: validation let a bad input through to compute."""


@pytest.fixture
def lbt_run(monkeypatch, capsys):
  """Runs the command in-process from the repo root; returns (status, stderr)."""
  import lbt.engine.checkpoint
  import lbt.data
  import lbt.engine.train

  def guard(what):
    def fail(*args, **kwargs):
      raise ComputeStarted(f"compute started: {what} was called")
    return fail

  monkeypatch.setattr(lbt.engine.train, "create_pipeline", guard("train.create_pipeline"))
  monkeypatch.setattr(lbt.engine.workdir, "write_config", guard("workdir.write_config"))
  monkeypatch.setattr(lbt.engine.checkpoint, "create_manager",
                      guard("checkpoint.create_manager"))
  monkeypatch.chdir(REPO)

  def run(argv):
    argv = ["lbt"] + list(argv)
    capsys.readouterr()
    status = main.run(argv)
    return status, capsys.readouterr().err

  yield run


def config_file(body: str, arg: str = ""):
  """A setup that writes a config file to tmp: `c` is fashion_mnist's config."""
  def setup(tmp_path):
    path = tmp_path / "bad_config.py"
    path.write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {REPO!r})
        from configs import fashion_mnist

        def get_config(arg=None):
          c = fashion_mnist.get_config(arg or {arg!r} or None)
        """) + textwrap.indent(textwrap.dedent(body).strip() + "\nreturn c\n", "  "))
    return [f"--config={path}"]
  return setup


def raw_file(text: str, name: str = "bad_config.py", suffix: str = ""):
  """A setup that writes `text` as the config file, passed with `suffix`."""
  def setup(tmp_path):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return [f"--config={path}{suffix}"]
  return setup


def workdir_of_another_config(tmp_path):
  """A workdir whose config.json differs from the command's in num_epochs."""
  from configs import fashion_mnist
  old = fashion_mnist.get_config("lars,batch=8192")
  old.num_epochs = 3.0
  workdir = tmp_path / "wd"
  workdir.mkdir()
  (workdir / "config.json").write_text(old.to_json())
  return [BASE + ":lars,batch=8192"]


def workdir_is_a_file(tmp_path):
  (tmp_path / "wd").write_text("not a directory")
  return [BASE]


def workdir_below_a_file(tmp_path):
  (tmp_path / "wd").write_text("not a directory")
  return [BASE, "--workdir={wd}/run"]


def data_dir_is_a_file(tmp_path):
  (tmp_path / "file.txt").write_text("x")
  return [BASE, f"--config.dataset.data_dir={tmp_path / 'file.txt'}"]


# (id, argv or setup(tmp_path) -> argv, expected substrings: the field, the
# value, then a distinctive part of what is allowed). "{wd}" in argv or in an
# expected substring is the workdir, "--workdir={wd}" is added unless the row
# has "NO_WORKDIR"; "{tmp}" is tmp_path.
NO_WORKDIR = "NO_WORKDIR"
CASES = [
    # The config argument (configs/fashion_mnist.py:<arg>).
    ("arg_unknown_optimizer", [BASE + ":lbfgs"],
     ["optimizer", "lbfgs", "adam, adamw"]),
    ("arg_unknown_key", [BASE + ":lars,bogus=3"],
     ["bogus", "3", "batch, epochs, micro"]),
    ("arg_batch_not_int", [BASE + ":lars,batch=abc"],
     ["batch", "abc", "int"]),
    ("arg_epochs_not_number", [BASE + ":lars,epochs=many"],
     ["epochs", "many", "a number"]),
    ("arg_batch_above_train_set", [BASE + ":lars,batch=70000"],
     ["batch_size", "70000", "60000 examples"]),
    # Overrides: fields that do not exist or do not parse.
    ("override_typo", [BASE, "--config.batchsize=7"],
     ["--config.batchsize", "not a field", "batch_size"]),
    ("override_wrong_type", [BASE, "--config.batch_size=abc"],
     ["batch_size", "abc", "int"]),
    ("override_bool_not_bool", [BASE, "--config.dataset.cache=maybe"],
     ["dataset.cache", "maybe", "oolean"]),
    # A field the config does not have: the typed key is the offending value.
        ("override_unknown_model_option", [BASE, "--config.model.depth=3"],
        ["--config.model.depth", "not a field", "width"]),
        ("override_unknown_optimizer_key", [BASE + ":adam", "--config.optimizer.momentum=0.9"],
        ["--config.optimizer.momentum", "not a field", "b1, b2"]),
    # Field values.
    ("dataset_name", [BASE, "--config.dataset.name=mnist"],
     ["dataset.name", "mnist", "fashion_mnist"]),
    ("data_dir_missing", [BASE, "--config.dataset.data_dir={tmp}/no/such/dir"],
     ["dataset.data_dir", "/no/such/dir", "an existing directory"]),
    ("data_dir_is_a_file", data_dir_is_a_file,
     ["dataset.data_dir", "file.txt", "an existing directory"]),
    ("model_name", [BASE, "--config.model.name=vgg16"],
     ["model.name", "vgg16", "lenet5, mlp"]),
    ("model_dtype", [BASE, "--config.model.dtype=float16"],
     ["model.dtype", "float16", "float32, bfloat16"]),
    ("batch_zero", [BASE, "--config.batch_size=0"],
     ["batch_size", "0", "a positive integer"]),
    ("batch_negative", [BASE, "--config.batch_size=-8"],
     ["batch_size", "-8", "a positive integer"]),
    ("batch_above_train_set", [BASE, "--config.batch_size=60008"],
     ["batch_size", "60008", "60000"]),
    ("microbatch_above_batch", [BASE, "--config.microbatch_size=512"],
     ["microbatch_size", "512", "at most batch_size (256)"]),
    # A batch or microbatch that does not divide is padded with masked
    # examples (issue 14); what cannot be padded is still refused:
    ("ghost_size_not_dividing_padded_microbatch",
     [BASE, "--config.batch_size=250", "--config.bn.ghost_size=3"],
     ["bn.ghost_size", "3", "positive divisor of the microbatch (256, padded from 250)"]),
    ("microbatch_negative", [BASE, "--config.microbatch_size=-16"],
     ["microbatch_size", "-16", "non-negative integer"]),
    ("eval_batch_not_multiple_of_devices", [BASE, "--config.eval_batch_size=100"],
     ["eval_batch_size", "100", "multiple of the device count (8)"]),
    ("seed_negative", [BASE, "--config.seed=-1"],
     ["seed", "-1", "non-negative integer"]),
    # bn.mode is gone: it only restated bn.ghost_size > 0 (issue 12).
    ("bn_mode", [BASE, "--config.bn.mode=ghost"],
     ["--config.bn.mode", "not a field", "ghost_size"]),
    ("ghost_size_negative", [BASE, "--config.bn.ghost_size=-4"],
     ["bn.ghost_size", "-4", "an integer >= 0"]),
    ("ghost_size_not_divisor", [BASE, "--config.bn.ghost_size=48"],
     ["bn.ghost_size", "48", "positive divisor of the microbatch (256)"]),
    ("ghost_size_above_microbatch",
     [BASE, "--config.microbatch_size=64", "--config.bn.ghost_size=128"],
     ["bn.ghost_size", "128", "positive divisor of the microbatch (64)"]),
    ("validation_examples_negative", [BASE, "--config.dataset.validation_examples=-1"],
     ["dataset.validation_examples", "-1", "non-negative integer"]),
    ("validation_examples_whole_split", [BASE, "--config.dataset.validation_examples=60000"],
     ["dataset.validation_examples", "60000", "fewer than the training split"]),
    ("batch_above_train_set_after_validation",
     [BASE, "--config.dataset.validation_examples=10000", "--config.batch_size=50048"],
     ["batch_size", "50048", "50000 examples after 10000 held out for validation"]),
    ("image_size_negative", [BASE, "--config.dataset.image_size=-32"],
     ["dataset.image_size", "-32", "non-negative integer"]),
    ("label_smoothing_one", [BASE, "--config.loss.label_smoothing=1.0"],
     ["loss.label_smoothing", "1.0", "[0, 1)"]),
    ("label_smoothing_negative", [BASE, "--config.loss.label_smoothing=-0.1"],
     ["loss.label_smoothing", "-0.1", "[0, 1)"]),
    ("adversarial_parameters", [BASE, "--config.loss.adversarial.parameters=old"],
     ["loss.adversarial.parameters", "old", "stale, fresh"]),
    ("adversarial_num_steps_zero", [BASE, "--config.loss.adversarial.num_steps=0"],
     ["loss.adversarial.num_steps", "0", "an int >= 1"]),
    ("adversarial_step_size_negative",
     [BASE, "--config.loss.adversarial.enabled=True", "--config.loss.adversarial.step_size=-0.1"],
     ["loss.adversarial.step_size", "-0.1", "a number > 0"]),
    ("adversarial_unknown_key", [BASE, "--config.loss.adversarial.norm=2"],
     ["--config.loss.adversarial.norm", "not a field", "step_size"]),
    ("file_adversarial_unknown_key", config_file("c.loss.adversarial.norm = 'l2'"),
     ["loss.adversarial.norm", "l2", "allowed: enabled, step_size"]),
    # Geiping et al.'s full-batch recipe: clipping, the gradient-norm penalty, no shuffle.
    ("file_clip_norm_negative", config_file("c.optimizer.clip_norm = -0.25"),
     ["optimizer.clip_norm", "-0.25", "a finite number >= 0"]),
    ("file_penalty_strength_negative",
     config_file("c.loss.gradient_penalty = dict(strength=-0.5, block=128)"),
     ["loss.gradient_penalty.strength", "-0.5", "a finite number >= 0"]),
    ("file_penalty_block_not_dividing_microbatch",
     config_file("c.loss.gradient_penalty = dict(strength=0.5, block=100)"),
     ["loss.gradient_penalty.block", "100", "a divisor of the microbatch (256 at batch 256)"]),
    ("file_penalty_unknown_key",
     config_file("c.loss.gradient_penalty = dict(strength=0.5, eps=0.01)"),
     ["loss.gradient_penalty.eps", "0.01", "allowed: strength, block"]),
    ("file_shuffle_not_bool", config_file("c.dataset.shuffle = 'never'"),
     ["dataset.shuffle", "never", "True (a new order each epoch) or False"]),
    ("cache_imagenet", [BASE, "--config.dataset.name=imagenet2012"],
     ["dataset.cache", "True", "False for imagenet2012", "differ in size"]),
    ("image_size_without_a_resizing_transform", [BASE, "--config.dataset.image_size=16"],
     ["dataset.image_size", "16", "fashion_mnist has no transform that resizes"]),
    ("optimizer_name", [BASE, "--config.optimizer.name=sgdd"],
     ["optimizer.name", "sgdd", "clars, lamb, lans, lars"]),
    ("gamma_low_above_gamma_high",
     [BASE + ":vr_lars", "--config.optimizer.gamma_low=0.5",
      "--config.optimizer.gamma_high=0.2"],
     ["optimizer.gamma_high", "0.2", ">= gamma_low (0.5)"]),
    ("gamma_low_zero", [BASE + ":vr_sgd", "--config.optimizer.gamma_low=0.0"],
     ["optimizer.gamma_low", "0.0", "a number > 0"]),
    ("b3_one", [BASE + ":vr_adam", "--config.optimizer.b3=1.0"],
     ["optimizer.b3", "1.0", "[0, 1)"]),
    # VRGD estimates the gradient variance from >= 2 microbatches.
    ("vr_one_microbatch", [BASE + ":vr_momentum,micro=256"],
     ["microbatch_size", "256", "at most batch_size / 2 (128)", ">= 2 microbatch"]),
    ("vr_one_microbatch_override", [BASE + ":vr_sgd", "--config.microbatch_size=0"],
     ["microbatch_size", "0", "vr_sgd estimates the gradient variance"]),
    ("optimizer_scaling", [BASE, "--config.optimizer.scaling=cubic"],
     ["optimizer.scaling", "cubic", "linear, sqrt, none"]),
    ("learning_rate_negative", [BASE, "--config.optimizer.learning_rate=-0.1"],
     ["optimizer.learning_rate", "-0.1", ">= 0"]),
    ("base_batch_size_zero", [BASE, "--config.optimizer.base_batch_size=0"],
     ["optimizer.base_batch_size", "0", ">= 1"]),
    ("schedule_name", [BASE, "--config.schedule.name=step"],
     ["schedule.name", "step", "constant, cosine, multistep, poly"]),
    # A warmup longer than the run is shortened now (issue 13's smoke runs).
    ("warmup_negative", [BASE, "--config.schedule.warmup_epochs=-1"],
     ["schedule.warmup_epochs", "-1", ">= 0"]),
    ("end_learning_rate_negative", [BASE, "--config.schedule.end_learning_rate=-1"],
     ["schedule.end_learning_rate", "-1", ">= 0"]),
    ("num_epochs_negative", [BASE, "--config.num_epochs=-1"],
     ["num_epochs", "-1", "a positive number"]),
    ("num_epochs_zero", [BASE, "--config.num_epochs=0"],
     ["num_epochs", "0", "a positive number"]),
    ("num_train_steps_negative", [BASE, "--config.num_train_steps=-5"],
     ["num_train_steps", "-5", "non-negative integer"]),
    ("checkpoint_keep_zero", [BASE, "--config.checkpoint_keep=0"],
     ["checkpoint_keep", "0", "a positive integer"]),
    ("checkpoint_every_negative", [BASE, "--config.checkpoint_every_steps=-1"],
     ["checkpoint_every_steps", "-1", "non-negative integer"]),
    # Config files (fields and combinations an override cannot reach).
    ("file_unknown_optimizer_hyperparameter",
     config_file("c.optimizer.momentum = 0.9", arg="adam"),
     ["optimizer.momentum", "0.9", "allowed for adam: b1, b2"]),
    ("file_unknown_model_option", config_file("c.model.depth = 3"),
     ["model.depth", "3", "allowed for lenet5: width"]),
    ("file_unknown_schedule_key", config_file("c.schedule.power = 2.0"),
     ["schedule.power", "2.0", "allowed: name, warmup_epochs, end_learning_rate"]),
    ("file_unknown_loss_key", config_file("c.loss.focal_gamma = 2.0"),
     ["loss.focal_gamma", "2.0", "loss has: label_smoothing"]),
    ("file_decay_epochs_not_increasing", config_file(
        "c.schedule = dict(name='multistep', warmup_epochs=1.0, "
        "decay_epochs=[5, 3], decay_factor=0.1)"),
     ["schedule.decay_epochs", "[5, 3]", "increasing epochs"]),
    ("file_decay_epoch_inside_warmup", config_file(
        "c.schedule = dict(name='multistep', warmup_epochs=2.0, "
        "decay_epochs=[1, 5], decay_factor=0.1)"),
     ["schedule.decay_epochs", "[1, 5]", ">= warmup_epochs"]),
    ("file_batch_size_float", config_file("c.batch_size = 256.0"),
     ["batch_size", "256.0", "int"]),
    ("file_missing_section", config_file("del c.bn"),
     ["bn", "None", "a section of the config"]),
    ("file_missing", [BASE.replace("fashion_mnist", "no_such_benchmark")],
     ["--config", "configs/no_such_benchmark.py", "a config file that loads"]),
        ("file_raises", raw_file("""\
            def get_config(arg=None):
              raise RuntimeError("boom from the config file")
            """),
        ["--config", "bad_config.py", "boom from the config file"]),
        ("file_syntax_error", raw_file("def get_config(:\n"),
        ["--config", "bad_config.py", "invalid syntax"]),
    ("file_bad_argument", config_file("pass", arg="lars,micro=x"),
     ["micro", "x", "int"]),
    # CLI flags and the workdir.
    ("no_config", [NO_WORKDIR, "--workdir={wd}"],
     ["--config", "None", "configs/fashion_mnist.py"]),
    ("no_workdir", [NO_WORKDIR, BASE],
     ["--workdir", "None", "a directory for the run"]),
    ("workdir_is_a_file", workdir_is_a_file,
     ["--workdir", "{wd}", "a directory, not a file"]),
    ("workdir_below_a_file", workdir_below_a_file,
     ["--workdir", "{wd}/run", "a directory, not a path below the file {wd}"]),
    ("num_epochs_infinite", [BASE, "--config.num_epochs=inf"],
     ["num_epochs", "inf", "a positive number (finite)"]),
    ("num_epochs_absurd", [BASE, "--config.num_epochs=1e9"],
     ["num_epochs", "1000000000", "the update counter is int32"]),
    ("num_train_steps_beyond_int32", [BASE, "--config.num_train_steps=3000000000"],
     ["num_train_steps", "3000000000", "the update counter is int32"]),
    ("process_id_out_of_range", [BASE, "--num_processes=2", "--process_id=2"],
     ["--process_id", "2", "[0, --num_processes=2)"]),
    ("coordinator_alone", [BASE, "--coordinator_address=localhost:1234"],
     ["--coordinator_address", "localhost:1234", "--num_processes and --process_id"]),
    ("num_processes_not_int", [BASE, "--num_processes=two"],
     ["num_processes", "two", "int"]),
    ("cli_flag_typo", [BASE, "--work_dir={wd}"],
     ["work_dir", "did you mean", "--workdir"]),
        ("unknown_cli_flag", [BASE, "--bogus_flag=1"],
        ["bogus_flag", "--workdir"]),
    ("workdir_of_another_config", workdir_of_another_config,
     ["--workdir", "{wd}", "changed: num_epochs", "--allow_config_change=num_epochs"]),
]


def _ids(case):
  return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("name,argv,expected", CASES, ids=[_ids(c) for c in CASES])
def test_bad_input_is_one_line_before_compute(name, argv, expected, lbt_run, tmp_path):
  del name
  workdir = tmp_path / "wd"
  argv = argv(tmp_path) if callable(argv) else list(argv)
  if NO_WORKDIR in argv:
    argv.remove(NO_WORKDIR)
  elif not any(a.startswith("--workdir") for a in argv):
    argv.append("--workdir={wd}")
  argv = [a.format(wd=workdir, tmp=tmp_path) for a in argv]
  before = {p: p.read_bytes() for p in workdir.iterdir()} if workdir.is_dir() else None
  existed = workdir.exists()

  status, err = lbt_run(argv)

  lines = [line for line in err.splitlines() if line.strip()]
  assert status == 2, err
  assert len(lines) == 1, err
  assert lines[0].startswith("lbt: error:"), err
  assert "Traceback" not in err
  for text in expected:
    assert text.format(wd=workdir, tmp=tmp_path) in lines[0], (text, lines[0])
  # No compute: the workdir is left exactly as it was (not even created).
  assert workdir.exists() == existed
  if before is not None:
    assert {p: p.read_bytes() for p in workdir.iterdir()} == before
  assert not (workdir / "checkpoints").exists()


def test_at_least_thirty_cases():
  assert len(CASES) >= 30
  assert len({_ids(c) for c in CASES}) == len(CASES)


def test_the_base_command_reaches_compute(lbt_run, tmp_path):
  """The rows fail for their one bad input: without it, compute would start."""
  with pytest.raises(ComputeStarted):
    lbt_run([BASE, f"--workdir={tmp_path / 'wd'}"])


@pytest.mark.parametrize("extra", [
    ["--config.num_train_steps=30"],  # shorter than the 234-update warmup
    ["--config.schedule.warmup_epochs=10"],  # longer than the 1404-update run
    ["--config.bn.ghost_size=32", "--config.dataset.validation_examples=10000"],
], ids=["smoke_run", "warmup_longer_than_run", "ghost_and_validation"])
def test_valid_inputs_reach_compute(extra, lbt_run, tmp_path):
  with pytest.raises(ComputeStarted):
    lbt_run([BASE, *extra, f"--workdir={tmp_path / 'wd'}"])


def test_allow_config_change_lets_a_changed_field_resume(lbt_run, tmp_path):
  argv = workdir_of_another_config(tmp_path)
  with pytest.raises(ComputeStarted):
    lbt_run(argv + [f"--workdir={tmp_path / 'wd'}", "--allow_config_change=num_epochs"])


def test_run_reads_overrides_from_its_argv(lbt_run, monkeypatch, capsys, tmp_path):
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(sys, "argv", ["pytest"])
  status = main.run(["lbt", BASE, f"--workdir={tmp_path}", "--config.batch_size=0"])
  assert status == 2
  assert "batch_size=0 is invalid" in capsys.readouterr().err


def test_run_is_reentrant(lbt_run, monkeypatch, capsys, tmp_path):
  monkeypatch.chdir(REPO)
  argv = ["lbt", BASE, f"--workdir={tmp_path}", "--config.batch_size=0"]
  for _ in range(2):
    assert main.run(argv) == 2
    assert "batch_size=0 is invalid" in capsys.readouterr().err


@pytest.mark.parametrize("extra,expected", [
    ([BASE + ":lars,batch=8192", "--config.microbatch_size=16384"],
     ["microbatch_size", "16384", "at most batch_size (8192)"]),
    ([BASE, "--config.model.name=vgg16"], ["model.name", "vgg16", "lenet5"]),
], ids=["microbatch_above_batch", "model_name"])
def test_command_line_exits_2_with_one_line(extra, expected, tmp_path):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  workdir = tmp_path / "wd"
  result = subprocess.run(
      [sys.executable, "-m", "lbt.main", *extra, f"--workdir={workdir}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("lbt: error:")
  for text in expected:
    assert text in lines[0], (text, lines[0])
  assert "Traceback" not in result.stderr
  assert result.stdout == ""
  assert not workdir.exists()
