"""The data pipeline: preprocessing output and what the dataset hands to taktstock."""

import numpy as np
from data.dataset import DigitsDataset
from PIL import Image

from data import preprocess


def test_preprocess_writes_all_images_and_labels(tmp_path):
    path = preprocess.write_processed(tmp_path / "digits.npz")
    images, labels, classes = preprocess.load_raw()
    with np.load(path) as arrays:
        assert np.array_equal(arrays["images"], images)
        assert np.array_equal(arrays["labels"], labels)
        assert arrays["classes"].tolist() == classes


def test_dataset_items_are_channel_first_images_in_unit_range(tmp_path):
    ds = DigitsDataset(str(preprocess.write_processed(tmp_path / "digits.npz")))
    x, y = ds[0]
    assert x.shape == (1, 8, 8) and x.dtype == np.float32
    assert ds.x.min() >= 0.0 and ds.x.max() <= 1.0
    assert len(ds) == 1797 and ds.classes == [str(i) for i in range(10)] and 0 <= int(y) < 10


def test_image_folder_loader_reads_classes_and_resizes(tmp_path):
    for label, value in (("cat", 10), ("dog", 200)):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 4), value, np.uint8), mode="L").save(tmp_path / label / f"{i}.png")
    images, labels, classes = preprocess.load_image_folder(tmp_path, size=5)
    assert classes == ["cat", "dog"]
    assert images.shape == (4, 5, 5) and labels.tolist() == [0, 0, 1, 1]
    assert images[0].max() == 10 and images[-1].min() == 200
