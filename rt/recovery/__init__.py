"""Socket.IO connection state recovery across the cluster (service.py)."""
