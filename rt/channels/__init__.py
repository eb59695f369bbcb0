"""Channels: `service.py` sends typing indicators, `events.py` is the socket edge
(`join-channels`, `events:channel`) and enters sessions into channels open-webui creates."""
