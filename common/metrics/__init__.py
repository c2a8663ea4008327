"""Evaluation metrics shared by the bundles."""
