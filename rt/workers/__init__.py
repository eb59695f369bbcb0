"""Every core of the box: `[server] workers = N` runs N worker processes behind one port.

`supervisor` binds the listening sockets, starts the broker the workers share (`broker`)
and the workers, forwards SIGHUP and SIGTERM to them, restarts one that dies, and speaks
for them all to systemd. `role` is what a worker is told by its supervisor (its index, the
sockets it inherits, where the broker and its siblings are). `routing` sends a polling
request, or a websocket upgrading a polling session, to the worker that owns the session.
`gather` merges the workers' /metrics into one view.
"""
