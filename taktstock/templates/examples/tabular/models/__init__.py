"""This project's model classes (config.yaml: model.name: models.net:ClassName)."""
