"""The one exception type users see for bad input."""


class ConfigError(ValueError):
  """Bad user input, found before any compute starts.

  The message always names the field, the value given and what is allowed, so
  the command line can print it as one line and exit non-zero.
  """

  def __init__(self, field: str, value=None, allowed: str = None):
    self.field, self.value, self.allowed = field, value, allowed
    if allowed is None:  # Rebuilt from its message: unpickling passes self.args.
      super().__init__(field)
    else:
      super().__init__(f"{field}={value!r} is invalid: {allowed}")
