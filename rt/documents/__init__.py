"""Collaborative documents (Yjs): `service.py` validates, stores and relays updates,
`yjs.py` reads the update grammar, `events.py` is the socket edge (`ydoc:*`, `join-note`),
`http.py` the HTTP edge (`/api/v1/documents/{id}`)."""
