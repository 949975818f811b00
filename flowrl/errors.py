"""The exceptions flowrl raises for bad user input.

flowrl separates "the input is wrong" from "flowrl is broken": every check of something a user hands
over (a config value, a dataset, a checkpoint, an environment name, a file path) raises
:class:`InputError`, and the ``flowrl`` command turns exactly these into one line on stderr and exit
code 2 (and nothing has been written or removed by then). A :class:`RunError` is a run that started
and then stopped for a reason it states (training diverged): one line, exit code 1. Any other
exception, a plain ``ValueError`` included, is a bug in flowrl (exit code 1, with a hint to report it).

Both classes subclass the built-in exception a Python caller would expect, so library users can keep
writing ``except ValueError`` or ``except FileNotFoundError``::

    try:
        ds = load_dataset("hopper-medium-v2")
    except InputError as e:  # also a ValueError
        print(f"cannot use this dataset: {e}")
"""

from __future__ import annotations

__all__ = ["DivergedError", "InputError", "MissingInputError", "OutputExistsError", "RunError"]


class InputError(ValueError):
    """Bad user input; the message names what is wrong and, where it can, how to fix it."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder the user named does not exist (an :class:`InputError` and a ``FileNotFoundError``)."""


class OutputExistsError(InputError, FileExistsError):
    """An output the user named already exists and replacing it was not asked for."""


class RunError(RuntimeError):
    """A run that started, then stopped for a reason the message states: not bad input, not a bug."""


class DivergedError(RunError):
    """Training produced a non-finite loss or gradient norm; the last checkpoint written is the last good one."""
