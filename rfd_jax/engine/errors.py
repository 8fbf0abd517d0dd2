"""The error a user fixes by changing the input (a config field, a path, a workdir): raised at
every level, turned by the program into one `error:` line and exit status 2."""


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""
