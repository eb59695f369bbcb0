"""Shared chats (open-webui 0.12): `events.py` is the socket edge (`events:chat`)."""
