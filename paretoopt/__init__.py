"""paretoopt."""
