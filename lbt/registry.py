"""Name -> object registries for models, optimizers, datasets and schedules.

Configs name things by string; a registry turns the string into the object and,
on a miss, lists every known name so the error tells the user what is allowed.
"""

import inspect
from typing import Any, Callable, Dict, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """A module-level dict filled by a decorator that refuses duplicates."""

  REQUIRED = inspect.Parameter.empty  # `options` value of an argument without default

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def decorator(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice.")
      self._entries[name] = obj
      return obj
    return decorator

  def get(self, name: str, field: str = "name") -> T:
    """Returns the entry; a miss raises KeyError naming `field` and the choices."""
    if name not in self._entries:
      raise KeyError(
          f"{field}={name!r} is not a known {self.kind}; "
          f"allowed: {', '.join(sorted(self._entries))}.")
    return self._entries[name]

  def options(self, name: str, *, internal=()) -> Dict[str, Any]:
    """The keyword options of the entry `name` (a factory), with their defaults.

    The one place lbt reads a signature: what a config section may hold for an
    optimizer or a model is what its factory accepts. Arguments in `internal`
    (supplied by lbt, not by the config) are left out; an option without a
    default maps to `Registry.REQUIRED`.
    """
    parameters = inspect.signature(self.get(name)).parameters
    return {p: v.default for p, v in parameters.items() if p not in internal}

  def names(self) -> list:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._entries))
