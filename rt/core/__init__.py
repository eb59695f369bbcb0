"""The bottom layer: errors, the one task helper and random tokens. Imports nothing else of
rt."""
