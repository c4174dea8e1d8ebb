"""Data: sources, cached preprocessing, datasets, augmentation and batch loading."""

from taktstock.data.prepare import PreparedData, prepare

__all__ = ["PreparedData", "prepare"]
