"""Exception types shared by every stage.

Every error the user can fix is a `NegRefineError`; its message names what failed, the value seen,
what was expected and how to fix it, so the CLI can print it without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NegRefineError(Exception):
    """An error caused by input or configuration that the user can fix."""


class ConfigError(NegRefineError):
    """A job file or `--set` override is invalid."""


class StageError(NegRefineError):
    """A pipeline stage cannot run or produced unusable output."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> NegRefineError:
    """The error for an unknown registry name: lists the names and suggests the closest."""
    names = sorted(choices)
    return NegRefineError(f"Unknown {kind} '{name}'.{did_you_mean(name, names)} Known: {', '.join(names)}.")
