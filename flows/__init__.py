"""Prefect flows: they only wire tasks together."""
import settings  # noqa: F401 - first: process defaults before Prefect or TensorFlow load
