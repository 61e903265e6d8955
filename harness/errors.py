"""Domain exceptions. Each names the parameter or file, the value found and what was expected."""


class HarnessError(ValueError):
    """Base class of every user-facing error of the harness; CLIs print its message and exit 2."""


class ConfigError(HarnessError):
    """A scenario name, config file, override or config value is not acceptable."""


class CacheError(HarnessError):
    """A cache file or folder is missing, corrupt, unsafe or does not match the data contract."""
