"""The training loop and its collaborators."""
