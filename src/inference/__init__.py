"""Inference: a trained model file as a classifier of uint8 images, the MLflow model
served from it, and the model `python -m src.predict` uses when none is named.
"""
