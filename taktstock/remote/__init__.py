"""Run directories in object storage (s3://, gs://, az://, any fsspec URL): a local mirror, uploaded as it is written."""
