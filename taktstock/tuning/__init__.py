"""Hyperparameter search: `taktstock tune` (Optuna, or Ray Tune with --backend ray). See docs/tuning.md."""
