"""Training stage: load the tensor store and pairs, build, fit, publish to the registry."""
