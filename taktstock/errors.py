"""Errors caused by the user (bad config, missing file, ...): reported in a few lines, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input. The CLI prints the message without a traceback and exits with code 2."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid experiment configuration."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used (corrupt, unsafe, incompatible)."""


class TrainingAborted(Exception):
    """Training stopped on purpose (NaN loss, failed checkpoint write); the run can be inspected or resumed."""

    exit_code = 1
