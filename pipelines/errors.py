"""Errors a user can act on. The CLI prints their message (no traceback) and exits with 2."""


class OncallError(Exception):
    """Base class: the message names the problem (file, column, key) and what to do."""


class ConfigError(OncallError):
    """A configuration file, environment variable or option is wrong."""


class ArchiveError(OncallError):
    """A ticket archive is missing, unreadable or does not follow the ticket contract."""


class ModelError(OncallError):
    """A base model or tokenizer directory is missing or not a usable Qwen3 checkpoint."""
