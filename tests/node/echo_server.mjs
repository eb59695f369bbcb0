// Reference Socket.IO server: the npm `socket.io` 4.8 package, for harness
// self-tests, conformance comparisons and benchmarks.
//
//   node echo_server.mjs [port] [host]     (port 0 or absent = a free port)
//
// Prints one JSON line on stdout once listening: {"port": N, "host": "...",
// "path": "/ws/socket.io", "version": "4.8.x"}. Exits when stdin closes or on
// SIGTERM/SIGINT.
//
// Behaviour:
//   - path '/ws/socket.io'
//   - handshake auth {token: "bad"} is refused: connect_error "unauthorized"
//     with data {code: 401}
//   - on connect emits 'hello' {sid, auth}
//   - 'echo' with an ack callback: acks with the same arguments; without one:
//     emits 'echo' back with the same arguments

import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? 0);
const host = process.argv[3] ?? "127.0.0.1";
const path = "/ws/socket.io";

let version = null;
try {
  const url = new URL("./node_modules/socket.io/package.json", import.meta.url);
  version = JSON.parse(readFileSync(url, "utf8")).version;
} catch {
  // informational only
}

const httpServer = createServer();
const io = new Server(httpServer, {
  path,
  cors: { origin: true, credentials: true },
});

io.use((socket, next) => {
  const auth = socket.handshake.auth || {};
  if (auth.token === "bad") {
    const err = new Error("unauthorized");
    err.data = { code: 401 };
    next(err);
    return;
  }
  next();
});

io.on("connection", (socket) => {
  socket.emit("hello", { sid: socket.id, auth: socket.handshake.auth ?? {} });
  socket.on("echo", (...args) => {
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
    if (ack) ack(...args);
    else socket.emit("echo", ...args);
  });
});

let closing = false;
function shutdown() {
  if (closing) return;
  closing = true;
  io.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}

httpServer.on("error", (err) => {
  process.stderr.write(`echo_server: ${err.stack || err}\n`);
  process.exit(1);
});
httpServer.listen(port, host, () => {
  const addr = httpServer.address();
  process.stdout.write(JSON.stringify({ port: addr.port, host, path, version }) + "\n");
});

process.stdin.on("end", shutdown);
process.stdin.on("error", shutdown);
process.stdin.resume();
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
