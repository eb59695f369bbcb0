// Benchmark peer: the reference Node `socket.io` 4.8 server on node:http (`ws`), with the
// appliance's semantics for the events and HTTP calls the benchmark uses (semantics.mjs).
//
//   WEBUI_SECRET_KEY=... RT_API_KEY=... node bench/peers/node_server.mjs [--port 0] [--host 127.0.0.1]
//
// Prints "listening on http://HOST:PORT/ws/socket.io" on stdout once bound. Exits on
// SIGTERM/SIGINT or when stdin closes. The npm packages come from tests/node/node_modules.

import { createRequire } from "node:module";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { PATH, Registry, nodeHttpApi, serveEvents, settings, stopWith } from "./semantics.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "..", "..", "tests", "node", "package.json"));
const { Server } = require("socket.io");

const { port, host, secret, apiKey } = settings("node_server");
const registry = new Registry();
// the API's listener comes first: socket.io wraps it and hands it what is not its own
let api = null;
const httpServer = createServer((req, res) => api(req, res));
const io = new Server(httpServer, { path: PATH, cors: { origin: "*" } });
api = nodeHttpApi(io, apiKey, (op) => registry.apply(op));
serveEvents(io, registry, secret);

let closing = false;
function shutdown() {
  if (closing) return;
  closing = true;
  io.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}

httpServer.on("error", (err) => {
  process.stderr.write(`node_server: ${err.stack || err}\n`);
  process.exit(1);
});
httpServer.listen(port, host, () => {
  const addr = httpServer.address();
  process.stdout.write(`listening on http://${host}:${addr.port}${PATH}\n`);
});
stopWith(shutdown);
