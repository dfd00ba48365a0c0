"""Errors a user can act on. The CLI prints their message (no traceback) and exits with the
error's ``exit_code``: 2 (a user error) unless the class says otherwise."""

# Exit codes of sysexits.h that say "not your fault, try again" to a scheduler.
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75


class OncallError(Exception):
    """Base class: the message names the problem (file, column, key) and what to do."""

    exit_code = 2


class ConfigError(OncallError):
    """A configuration file, environment variable or option is wrong."""


class ArchiveError(OncallError):
    """A ticket archive is missing, unreadable or does not follow the ticket contract."""


class ModelError(OncallError):
    """A base model or tokenizer directory is missing or not a usable Qwen3 checkpoint."""


class RegistryError(OncallError):
    """The MLflow tracking server or registry failed to answer (unreachable, refused, broken):
    not the same as a model, version or alias that does not exist."""

    exit_code = EX_UNAVAILABLE


class LockHeldError(OncallError):
    """Another job that moves aliases or writes outputs holds the jobs' lock: try again later."""

    exit_code = EX_TEMPFAIL
