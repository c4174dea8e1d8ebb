"""Pipelines around the CLI: DVC stage graphs, Airflow DAGs and model promotion."""
