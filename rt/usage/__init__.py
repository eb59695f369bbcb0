"""Models in use: `service.py` keeps them (with a TTL) and broadcasts the list, `events.py`
is the socket edge (`usage`)."""
