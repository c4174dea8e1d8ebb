"""Experiment configuration: typed schema, YAML loading, overrides and validation."""

from taktstock.config.loader import config_to_dict, config_to_yaml, load_config, save_config
from taktstock.config.schema import Config

__all__ = ["Config", "config_to_dict", "config_to_yaml", "load_config", "save_config"]
