"""Who is online: `service.py` keeps sessions and last-active times, `events.py` is the
socket edge (`user-join`, `heartbeat`)."""
