// Benchmark peer: the reference Node `socket.io` 4.8 server on N cores, as the socket.io
// documentation sets it up: node:cluster workers (socket.io on node:http, `ws`) behind one port
// with @socket.io/sticky in the primary and @socket.io/cluster-adapter between the workers.
// The semantics of every Node peer (semantics.mjs); the user and channel registry is
// replicated to every worker before an HTTP call that changes it is answered.
//
//   WEBUI_SECRET_KEY=... RT_API_KEY=... node bench/peers/node_cluster_server.mjs --workers N [--port 0] [--host 127.0.0.1]
//
// Prints "listening on http://HOST:PORT/ws/socket.io" on stdout once bound and every worker is
// up. Exits on SIGTERM/SIGINT or when stdin closes (the workers with it). The npm packages come
// from bench/peers/node_modules (`npm ci` in bench/peers).
//
// Routing: @socket.io/sticky's primary reads the first chunk of every TCP connection and hands
// the connection to the worker with the fewest socket.io clients (a websocket upgrade, a GET);
// a request with a body (the HTTP API's PUT and POST) stays in the primary, which relays it to
// a worker over IPC. A broadcast to a room goes to every worker through the primary
// (cluster-adapter). The CPU of the primary counts as the server's.

import cluster from "node:cluster";
import { createRequire } from "node:module";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { PATH, Registry, nodeHttpApi, serveEvents, settings, stopWith } from "./semantics.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "package.json"));
const { setupMaster, setupWorker } = require("@socket.io/sticky");
const { createAdapter, setupPrimary } = require("@socket.io/cluster-adapter");

const { port, host, arg, secret, apiKey } = settings("node_cluster_server");
const workers = Math.max(1, Number(arg("--workers", "1")));

if (cluster.isPrimary) primary();
else worker();

// ------------------------------------------------------------------------ primary ---

function primary() {
  const httpServer = createServer();
  setupMaster(httpServer, { loadBalancingMethod: "least-connection" });
  // @socket.io/sticky 2.0.1 hands a connection without a request body (a websocket upgrade)
  // to a worker by sending its handle over IPC. Node keeps the primary's copy of the handle
  // open, still reading (into a no-op), until the worker acknowledges it: a client frame that
  // arrives in between (the namespace CONNECT right after the 101) is read here and lost
  // (about 1 in 1000 connects under load: a client that never connects). So reading stops at
  // the first chunk of such a connection, before sticky's own "data" listener sends the
  // handle (prepended; sticky removes the listeners before it in its "connection" handler,
  // which runs first): what follows stays in the kernel for the worker.
  httpServer.on("connection", (socket) => {
    socket.prependOnceListener("data", (chunk) => {
      const end = chunk.indexOf("\r\n\r\n");
      const head = chunk.subarray(0, end < 0 ? chunk.length : end).toString().toLowerCase();
      if (head.includes("content-length:") || head.includes("transfer-encoding:")) return;
      socket.pause();
      if (socket._handle && typeof socket._handle.readStop === "function") socket._handle.readStop();
    });
  });
  setupPrimary(); // cluster-adapter: relays the workers' broadcasts
  cluster.setupPrimary({ serialization: "advanced" });

  // registry replication: an op from one worker is applied by every worker, then the
  // origin is told (and only then answers its HTTP call)
  const waiting = new Map(); // key -> {left, worker, id}
  let seq = 0;
  let ready = 0;
  cluster.on("message", (w, msg) => {
    if (!msg || !msg.benchReg) return;
    if (msg.benchReg === "ready") {
      ready += 1;
      if (ready === workers) listen();
    } else if (msg.benchReg === "op") {
      const all = Object.values(cluster.workers);
      const key = ++seq;
      waiting.set(key, { left: all.length, worker: w, id: msg.id });
      for (const other of all) other.send({ benchReg: "apply", op: msg.op, key });
    } else if (msg.benchReg === "applied") {
      const entry = waiting.get(msg.key);
      if (entry && --entry.left === 0) {
        waiting.delete(msg.key);
        entry.worker.send({ benchReg: "done", id: entry.id });
      }
    }
  });
  let closing = false;
  cluster.on("exit", (w, code, signal) => {
    if (closing) return;
    process.stderr.write(`node_cluster_server: worker ${w.id} exited (${code ?? signal})\n`);
    shutdown(1);
  });
  httpServer.on("error", (err) => {
    process.stderr.write(`node_cluster_server: ${err.stack || err}\n`);
    shutdown(1);
  });
  function listen() {
    httpServer.listen(port, host, () => {
      const addr = httpServer.address();
      process.stdout.write(`listening on http://${host}:${addr.port}${PATH} (${workers} workers)\n`);
    });
  }
  function shutdown(code = 0) {
    if (closing) return;
    closing = true;
    for (const w of Object.values(cluster.workers)) w.kill("SIGTERM");
    httpServer.close();
    setTimeout(() => process.exit(code), 300).unref();
  }
  for (let i = 0; i < workers; i += 1) cluster.fork();
  stopWith(() => shutdown(0));
}

// ------------------------------------------------------------------------- worker ---

function worker() {
  const { Server } = require("socket.io");
  const registry = new Registry();
  const pending = new Map(); // id -> resolve
  let seq = 0;
  // a change goes to the primary, which has every worker (this one too) apply it
  const replicate = (op) => new Promise((resolve) => {
    const id = ++seq;
    pending.set(id, resolve);
    process.send({ benchReg: "op", id, op });
  });
  process.on("message", (msg) => {
    if (!msg || !msg.benchReg) return;
    if (msg.benchReg === "apply") {
      registry.apply(msg.op);
      process.send({ benchReg: "applied", key: msg.key });
    } else if (msg.benchReg === "done") {
      const resolve = pending.get(msg.id);
      pending.delete(msg.id);
      if (resolve) resolve();
    }
  });

  // the API's listener comes first: socket.io wraps it and hands it what is not its own
  let api = null;
  const httpServer = createServer((req, res) => api(req, res));
  const io = new Server(httpServer, { path: PATH, cors: { origin: "*" }, adapter: createAdapter() });
  api = nodeHttpApi(io, apiKey, replicate);
  setupWorker(io);
  serveEvents(io, registry, secret);

  process.on("SIGTERM", () => process.exit(0));
  process.on("SIGINT", () => {}); // the primary decides
  process.send({ benchReg: "ready" });
}
