"""Model classes, their registry and weight initialisation."""

from taktstock.models.registry import build_model, get_model_class, register_model

__all__ = ["build_model", "get_model_class", "register_model"]
