"""Crash-safe checkpoint files and their management."""

from taktstock.checkpoint.manager import CheckpointManager

__all__ = ["CheckpointManager"]
