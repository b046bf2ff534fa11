"""What every lbt command shares: flags, Python config files, overrides, exit codes.

`lbt.main`, `lbt.study` and `lbt.report` are thin: each defines its own
`absl.flags.FlagValues` (so that several can be imported into one process),
and uses this module to parse them, load a Python file
(`path/to/file.py[:ARG]`), apply `--config.a.b=value` overrides, and turn the
outcome into an exit status. Bad input of any kind becomes one `ConfigError`
line naming the flag or field, the value and what is allowed; the library's
exception text is never parsed.
"""

import ast
import ctypes
import difflib
import importlib.util
import os
import sys
from typing import Callable, List, Sequence

from absl import flags
import ml_collections

from lbt import errors
from lbt.io import faults, preemption
from lbt.errors import ConfigError

EXIT_OK = 0

# The repository root, so that config files can `import configs.<benchmark>`.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def one_line(text) -> str:
  return " ".join(str(text).split())


def keep_freed_host_memory() -> None:
  """Lets glibc keep freed memory in the process instead of returning it.

  XLA:CPU's temporaries of every update are otherwise unmapped and faulted in
  again (42,000 page faults per LeNet-5 update at batch 1,024; 0.70x the step
  time with this, benchmarks/roofline.py). Must run before jax is imported;
  the values must fit a C int. Where libc is not glibc, nothing changes.
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return
  for option, value in ((-8, 1), (-3, 2**31 - 1), (-1, 2**31 - 1)):
    libc.mallopt(option, value)  # M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def run(command: Callable[[], object]) -> int:
  """Calls `command()`; returns 0, or the exit status of its exception.

  The exception's one line goes to stderr; an exception no rule names is
  re-raised with its traceback (a bug, not an outcome).
  """
  try:
    faults.moment("start")
    command()
  except BaseException as e:  # pylint: disable=broad-except
    status = errors.exit_status(e)
    if status is None:
      raise
    print(errors.exit_line(e), file=sys.stderr, flush=True)
    return status
  return EXIT_OK


def with_failures(status: int, failed: Sequence[str], program: str) -> int:
  """A command's exit status once its work ended: 1, naming them, when
  trials failed (the rerun retries them), else `status`."""
  if status == EXIT_OK and failed:
    print(f"{program}: {len(failed)} trial(s) failed: {', '.join(failed)}; fix the cause "
          "and rerun the same command", file=sys.stderr)
    return 1
  return status


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str], *, program: str,
                override_prefix: str = "--config.") -> List[str]:
  """Parses `argv` (argv[0] is the program) into `flag_values`, repeatably.

  Returns:
    The `override_prefix` arguments, in order, for `apply_overrides`.

  Raises:
    ConfigError: an unknown flag (with the closest known one), a value that
      does not parse as its flag's type, or a stray positional argument.
  """
  overrides = [a for a in argv[1:] if a.startswith(override_prefix)]
  plain = [a for a in argv if not a.startswith(override_prefix)]
  known = [f"--{name}" for name in flag_values]
  flag_values.unparse_flags()
  try:
    rest = flag_values(plain)
  except flags.UnrecognizedFlagError as e:
    close = difflib.get_close_matches(f"--{e.flagname}", known, n=1)
    raise ConfigError(
        f"--{e.flagname}", _value_of(plain, e.flagname),
        f"not a flag of {program}; its flags are: {', '.join(known)}"
        f"{'; did you mean ' + close[0] + '?' if close else ''}") from None
  except flags.Error as e:
    for arg in plain[1:]:
      name, _, value = arg.lstrip("-").partition("=")
      if name in flag_values:
        try:
          flag_values[name].parser.parse(value)
        except (ValueError, TypeError):
          raise ConfigError(f"--{name}", value,
                            f"a value of type {flag_values[name].flag_type()}") from None
    raise ConfigError("flags", one_line(" ".join(plain[1:])), one_line(e)) from None
  if rest[1:]:
    raise ConfigError("arguments", rest[1:], f"none besides flags ({', '.join(known)})")
  return overrides


def _value_of(argv: Sequence[str], name: str):
  return next((a.partition("=")[2] or None for a in argv
               if a.lstrip("-").partition("=")[0] == name), None)


def file_id(spec: str) -> str:
  """A config or study file with its argument, named the same from any clone:
  relative to the repository when inside it (a pod's workers and a laptop
  agree), else its real path."""
  path, sep, arg = spec.partition(":")
  real = os.path.realpath(path)
  if real.startswith(REPO_ROOT + os.sep):
    real = os.path.relpath(real, REPO_ROOT)
  return f"{real}{sep}{arg}"


def load_python_file(spec: str, *, flag: str = "--config", function: str = "get_config",
                     constants: Sequence[str] = ()):
  """Imports `path/to/file.py` and returns `function(ARG)` (`function()` without ARG),
  or with `constants`, (that result, {name: the file's value or None}).

  `spec` is `path/to/file.py` or `path/to/file.py:ARG`, as ml_collections'
  config flags take it. The file may import `configs.*` and `lbt.*`. The
  result's type is not checked here: each command knows what it expects.

  Raises:
    ConfigError naming `flag` and `spec` for a missing file, an import error
    or an exception inside the function; a ConfigError the file raises itself
    (e.g. for a bad ARG) keeps its own message.
  """
  path, has_arg, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(flag, spec, f"a config file that loads (no file {path!r})")
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  name = "_lbt_file_" + os.path.splitext(os.path.basename(path))[0]
  try:
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(flag, spec, f"a config file that loads ({type(e).__name__}: "
                      f"{one_line(e)})") from None
  make = getattr(module, function, None)
  if not callable(make):
    raise ConfigError(flag, spec, f"a config file that defines {function}(arg)")
  try:
    result = make(arg) if has_arg else make()
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(flag, spec, f"a file whose {function}() runs ({type(e).__name__}: "
                      f"{one_line(e)})") from None
  if not constants:
    return result
  return result, {name: getattr(module, name, None) for name in constants}


def _parse_value(text: str, current, field: str):
  """`text` as the type of the field's current value."""
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ConfigError(field, text, "a boolean: true or false")
    return text.lower() in ("true", "1")
  if isinstance(current, (int, float)):
    try:
      return type(current)(text)
    except ValueError:
      raise ConfigError(field, text, f"a value of type {type(current).__name__}") from None
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise ConfigError(field, text, f"a {type(current).__name__} literal such as "
                        "(1, 2) or 1,2 ('' quotes around strings)") from None
    return type(current)(value if isinstance(value, (tuple, list)) else (value,))
  if current is None:  # No type to follow: a Python literal, else the text.
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str],
                    flag_prefix: str = "--config.") -> None:
  """Applies `--config.a.b=value` strings, in order, to a locked ConfigDict.

  Each value takes the type of the field it replaces (int, float, bool, str,
  tuple or list; a None field takes a Python literal or the text).

  Raises:
    ConfigError naming the override: a field the config does not have (with
    the fields it has), a section given a value, or a value of the wrong type.
  """
  for override in overrides:
    path, has_value, text = override[len(flag_prefix):].partition("=")
    field = flag_prefix + path
    node, parts = config, path.split(".")
    for depth, part in enumerate(parts):
      keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      if part not in keys:
        section = ".".join(["config"] + parts[:depth])
        raise ConfigError(field, text or None, f"not a field of {section}; its fields "
                          f"are: {', '.join(keys) or 'none'}")
      if depth < len(parts) - 1:
        node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
      raise ConfigError(field, text or None, f"a value for a field of this section, "
                        f"e.g. {field}.{sorted(current.keys())[0] if current else 'x'}=...")
    if not has_value:
      raise ConfigError(field, None, f"a value: {field}=VALUE")
    try:
      node[parts[-1]] = _parse_value(text, current, field)
    except TypeError:  # ml_collections refuses the type change.
      raise ConfigError(field, text, f"a value of type {type(current).__name__}") from None


# Installed first thing by every command (see lbt.io.preemption).
exit_on_signals = preemption.exit_on_signals
