"""Curation: raw question batches -> cleaned pairs (cleaner) -> chat dataset (dataset, datacard, validate)."""
