"""The image sources on the dataset seam: `data.source: imagefolder | image_csv` -> `PreparedImages`.

Registered into `registry.SOURCES` by `data/sources.py` (the sources' provider module). This module
stays light: config validation imports it, the image pipeline is imported when a source is prepared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taktstock.config.schema import Config
from taktstock.data.dataset import register_dataset

if TYPE_CHECKING:
    from taktstock.data.images.prepare import PreparedImages


def check_image_config(config: Config) -> None:
    """Load-time checks: unknown transform names, bad arguments, a pixel cache that cannot apply (ConfigError)."""
    from taktstock.data.images.transforms import check_transforms

    check_transforms(config)


@register_dataset("imagefolder", check=check_image_config)
@register_dataset("image_csv", check=check_image_config)
def prepare_image_source(config: Config) -> PreparedImages:
    from taktstock.data.images.prepare import prepare_images

    return prepare_images(config, verbose=True)
