"""The image sources on the dataset seam: `data.source: imagefolder | image_csv` -> `PreparedImages`.

Imported by the seam's `dataset_source()` lookup for the names in `IMAGE_SOURCES` (it needs
`taktstock.data.dataset`, which the seam adds).
"""

from __future__ import annotations

from taktstock.config.schema import Config
from taktstock.data.dataset import register_dataset
from taktstock.data.images.prepare import PreparedImages, prepare_images


@register_dataset("imagefolder")
@register_dataset("image_csv")
def prepare_image_source(config: Config) -> PreparedImages:
    return prepare_images(config, verbose=True)
