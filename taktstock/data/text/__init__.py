"""Text datasets: readers, tokenizers, memory-mapped token stores, classification and language-modelling splits.

`readers` turns a JSONL/CSV/Parquet file or a `save_to_disk` directory into texts and targets; `tokenizer` trains
or loads a Hugging Face `tokenizers` tokenizer; `tokens` stores token ids as one flat memory-mapped file plus
offsets; `classification` and `lm` are the per-split datasets; `prepared` builds the cached prepared datasets.
"""
