"""Encrypted channels of open-webui 0.12 (MLS packets relayed, never read):
`service.py` the relay, `delivery.py` how packets reach sockets on any node or on
open-webui's own server, `events.py` the socket edge (`encryption:*`). Its state lives in
backends/encryption_state.py."""
