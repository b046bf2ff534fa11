"""Name -> object registries for models, optimizers, datasets and schedules.

Configs name things by string; a registry turns the string into the object and,
on a miss, lists every known name so the error tells the user what is allowed.
"""

from typing import Callable, Dict, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """A module-level dict filled by a decorator that refuses duplicates."""

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

  def names(self) -> list:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._entries))
