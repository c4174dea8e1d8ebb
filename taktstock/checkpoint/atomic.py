"""Moved to `taktstock.utils.atomic` (config and the run directory write atomically too); kept for old imports."""

from taktstock.utils.atomic import atomic_write_bytes, atomic_write_text, fsync_dir, remove_stale_temporaries

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_dir", "remove_stale_temporaries"]
