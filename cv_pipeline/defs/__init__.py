"""Dagster objects, one folder per stage. Thin: the work lives in the Dagster-free modules."""
