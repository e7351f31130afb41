"""Question sources: the Stack Exchange API, a data dump, and the local sample site."""
