"""The one base class of nstudent's input errors.

An input error is a problem with what the user gave (a flag, a file, a folder,
data): the tools print its message in one line and exit 2. Anything else that
goes wrong is a bug and keeps its traceback (exit 1), so every input check
raises a subclass of `InputError`, never a plain ValueError.
"""


class InputError(ValueError):
    """Bad input: a flag out of range, data or a run folder that does not fit."""


class MissingInput(InputError, FileNotFoundError):
    """A file or folder the user named is not there."""
