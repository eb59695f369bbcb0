"""The bottom layer: errors and the one task helper. Imports nothing else of rt."""
