// Benchmark peer: the reference Node `socket.io` 4.8 server attached to uWebSockets.js
// (`io.attachApp(app)`, the socket.io documentation's recommendation for performance), with
// exactly the semantics of bench/peers/node_server.mjs; the HTTP API routes are on the uWS app.
//
//   WEBUI_SECRET_KEY=... RT_API_KEY=... node bench/peers/node_uws_server.mjs [--port 0] [--host 127.0.0.1]
//
// Prints "listening on http://HOST:PORT/ws/socket.io" on stdout once bound. Exits on
// SIGTERM/SIGINT or when stdin closes. The npm packages come from bench/peers/node_modules
// (bench/peers/package.json: socket.io 4.8 and the uWebSockets.js binaries of the npm package
// `uwebsockets`, a third-party republish of uWebSockets.js; `npm ci` in bench/peers).
//
// With attachApp, socket.io subscribes every websocket session to a uWS topic per room and
// sends a broadcast to one room with a single `app.publish` (socket.io/dist/uws.js).
//
// Semantics: semantics.mjs, as for every Node peer.

import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { PATH, Registry, apiCall, serveEvents, settings, stopWith } from "./semantics.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "package.json"));
const { Server } = require("socket.io");
const uWS = require("uwebsockets");

const { port, host, secret, apiKey } = settings("node_uws_server");
const registry = new Registry();

const app = uWS.App();
const io = new Server({ path: PATH, cors: { origin: "*" } });
io.attachApp(app);
serveEvents(io, registry, secret);

// ------------------------------------------------------------- HTTP on the uWS app ---

const STATUS = {
  200: "200 OK", 202: "202 Accepted", 400: "400 Bad Request", 401: "401 Unauthorized",
  404: "404 Not Found", 500: "500 Internal Server Error",
};

function reply(res, code, body) {
  if (res.aborted) return;
  const text = JSON.stringify(body);
  res.cork(() => {
    res.writeStatus(STATUS[code] || `${code} Status`).writeHeader("content-type", "application/json").end(text);
  });
}

// uWS: the request object is only valid inside this handler, so everything needed later is
// copied out first; the body arrives in chunks through onData (copied, uWS reuses them).
app.any("/*", (res, req) => {
  const method = req.getCaseSensitiveMethod ? req.getCaseSensitiveMethod() : req.getMethod().toUpperCase();
  const url = req.getUrl();
  const auth = req.getHeader("authorization");
  const hasBody = Number(req.getHeader("content-length") || "0") > 0 || req.getHeader("transfer-encoding") !== "";
  res.aborted = false;
  res.onAborted(() => { res.aborted = true; });
  const finish = (raw) => {
    let body;
    try {
      body = raw.length ? JSON.parse(raw.toString("utf8")) : null;
    } catch (err) {
      return reply(res, 400, { error: "bad_request", message: String(err && err.message) });
    }
    apiCall(io, apiKey, { method, url, authorization: auth, body }, (op) => registry.apply(op))
      .then(([code, answer]) => reply(res, code, answer))
      .catch((err) => reply(res, 500, { error: "internal", message: String(err && err.message) }));
  };
  if (!hasBody) return finish(Buffer.alloc(0));
  const chunks = [];
  res.onData((chunk, isLast) => {
    chunks.push(Buffer.from(chunk.slice(0)));
    if (isLast) finish(Buffer.concat(chunks));
  });
});

let listenSocket = null;
let closing = false;
function shutdown() {
  if (closing) return;
  closing = true;
  if (listenSocket) uWS.us_listen_socket_close(listenSocket);
  io.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}

app.listen(host, port, (token) => {
  if (!token) {
    process.stderr.write(`node_uws_server: cannot listen on ${host}:${port}\n`);
    process.exit(1);
  }
  listenSocket = token;
  process.stdout.write(`listening on http://${host}:${uWS.us_socket_local_port(token)}${PATH}\n`);
});
stopWith(shutdown);
