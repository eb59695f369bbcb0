"""The chat streaming relay: `request.py` (what a request and an outcome are), `stream.py`
(one stream, upstream to tabs and caller), `service.py` (all streams of the node, limits,
cancel), `http.py` (the HTTP edge: `/api/chat/completions`, cancel, stored messages)."""
