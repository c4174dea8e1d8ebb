"""A user's own project, as `benchmarks/user_dataset.py` times it: a Dataset class and a model class by import path."""
