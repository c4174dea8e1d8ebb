"""Image data: folder and manifest indexes, decoding in DataLoader workers, torchvision v2 transforms
seeded by (seed, epoch, index), per-channel statistics and an optional memory-mapped pixel cache.

Nothing here reads every image into the main process: the prepared cache is an index (paths, labels,
splits) of memory-mapped arrays, and pixels are decoded (or read from the pixel cache) per sample.
"""

IMAGE_SOURCES = ("imagefolder", "image_csv")
