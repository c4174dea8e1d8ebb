"""This project's data: the preprocessing script and the dataset class named in config.yaml."""
