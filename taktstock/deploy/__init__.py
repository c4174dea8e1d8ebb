"""Deployment: a self-contained inference module (training preprocessing + model), export and batch prediction."""
