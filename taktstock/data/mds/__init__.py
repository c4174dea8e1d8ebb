"""Streaming shards: any prepared taktstock dataset as MosaicML Streaming (MDS) shards, read by random access.

`write.py` writes a prepared dataset's splits as MDS shards plus `taktstock.json` (task, spec, preprocessing);
`shards.py` reads a split's shards from a local directory or an S3-compatible remote through a local cache;
`dataset.py` is the `data.source: mds` prepared dataset on the dataset seam; `order.py` the shard-blocked
training order (`data.shuffle_block`) and `cache.py` the bounded, evicting cache (`data.cache_limit`).
"""
