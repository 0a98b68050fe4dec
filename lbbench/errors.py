"""Errors a user can cause; the CLI turns them into one clear line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message is complete and is shown as-is, without a traceback."""

    exit_code = 2


class ConfigError(UserError):
    """A config file is wrong: names the file, the key path and what was expected."""

    def __init__(self, file: str, key_path: str, expected: str) -> None:
        self.file = file
        self.key_path = key_path
        self.expected = expected
        where = f"{file}: {key_path}" if key_path else file
        super().__init__(f"{where}: {expected}")


class NotBuiltYet(UserError):
    """A subcommand whose part of lbbench does not exist yet."""
