"""Errors that name the case, the file and what is wrong."""

from __future__ import annotations


class ClemalignError(Exception):
    """Base class of all errors raised on purpose by clemalign."""


class CaseError(ClemalignError):
    """Bad input for one case.

    Parameters
    ----------
    case : str
        Name of the case the problem belongs to.
    message : str
        What is wrong, in words a microscopist understands.
    path : str or None
        The file involved, if any.
    """

    def __init__(self, case: str, message: str, path: str | None = None) -> None:
        self.case = case
        self.path = path
        self.detail = message
        where = f" (file: {path})" if path else ""
        super().__init__(f"case {case!r}: {message}{where}")


class ConfigError(ClemalignError):
    """A configuration value is invalid; the message names the key and the value."""

    def __init__(self, key: str, value: object, message: str) -> None:
        self.key = key
        self.value = value
        super().__init__(f"config key {key!r} = {value!r}: {message}")
