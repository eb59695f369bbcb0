"""Direct connections' completion streams: `service.py` publishes `{user}:{session}:{request}`
events on `{prefix}:direct_completion`; the gateway hands it every event no feature names."""
