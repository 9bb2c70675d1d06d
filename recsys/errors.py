"""Errors a user can fix. The CLI prints them as one paragraph, no traceback."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in input or configuration, with what to do about it."""


class InputFileError(UserError):
    """A problem with an input file: names the file, row and field."""

    def __init__(self, path, problem: str, *, row: int | None = None, field: str | None = None,
                 hint: str | None = None):
        self.path, self.row, self.field, self.problem, self.hint = str(path), row, field, problem, hint
        where = f"{self.path}"
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field {field!r}"
        message = f"{where}: {problem}."
        if hint:
            message += f" {hint}"
        super().__init__(message)


class DatabaseUnavailableError(UserError):
    """The database cannot be reached or refuses our credentials."""
