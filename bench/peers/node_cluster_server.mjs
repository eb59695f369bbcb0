// Benchmark peer: the reference Node `socket.io` 4.8 server on N cores, as the socket.io
// documentation sets it up: node:cluster workers (socket.io on node:http, `ws`) behind one port
// with @socket.io/sticky in the primary and @socket.io/cluster-adapter between the workers.
// Same semantics as bench/peers/node_server.mjs; the user and channel registry is replicated
// to every worker before an HTTP call that changes it is answered.
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
import { createHmac, timingSafeEqual } from "node:crypto";
import { createRequire } from "node:module";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "package.json"));
const { setupMaster, setupWorker } = require("@socket.io/sticky");
const { createAdapter, setupPrimary } = require("@socket.io/cluster-adapter");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const port = Number(arg("--port", "0"));
const host = arg("--host", "127.0.0.1");
const workers = Math.max(1, Number(arg("--workers", "1")));
const path = "/ws/socket.io";
const SECRET = process.env.WEBUI_SECRET_KEY || "";
const API_KEY = process.env.RT_API_KEY || "";
const LEEWAY_S = 30;
if (!SECRET || !API_KEY) {
  process.stderr.write("node_cluster_server: WEBUI_SECRET_KEY and RT_API_KEY are required\n");
  process.exit(2);
}

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
      process.stdout.write(`listening on http://${host}:${addr.port}${path} (${workers} workers)\n`);
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
  process.stdin.on("end", () => shutdown(0));
  process.stdin.on("error", () => shutdown(0));
  process.stdin.resume();
  process.on("SIGTERM", () => shutdown(0));
  process.on("SIGINT", () => shutdown(0));
}

// ------------------------------------------------------------------------- worker ---

function worker() {
  const { Server } = require("socket.io");
  const users = new Map(); // id -> {id, name}
  const channels = new Map(); // cid -> Set(user id)
  const userChannels = new Map(); // user id -> Set(cid)

  function apply(op) {
    if (op.t === "user") users.set(op.user.id, op.user);
    else if (op.t === "channel") {
      const members = new Set(op.members);
      channels.set(op.cid, members);
      for (const uid of members) {
        if (!userChannels.has(uid)) userChannels.set(uid, new Set());
        userChannels.get(uid).add(op.cid);
      }
    }
  }
  const pending = new Map(); // id -> resolve
  let seq = 0;
  const replicate = (op) => new Promise((resolve) => {
    const id = ++seq;
    pending.set(id, resolve);
    process.send({ benchReg: "op", id, op });
  });
  process.on("message", (msg) => {
    if (!msg || !msg.benchReg) return;
    if (msg.benchReg === "apply") {
      apply(msg.op);
      process.send({ benchReg: "applied", key: msg.key });
    } else if (msg.benchReg === "done") {
      const resolve = pending.get(msg.id);
      pending.delete(msg.id);
      if (resolve) resolve();
    }
  });

  class AuthError extends Error {}

  function verifyToken(token) {
    if (typeof token !== "string" || token.length === 0) throw new AuthError("token_missing");
    if (token.length > 8192) throw new AuthError("token_invalid");
    const parts = token.split(".");
    if (parts.length !== 3) throw new AuthError("token_invalid");
    let header;
    let claims;
    try {
      header = JSON.parse(Buffer.from(parts[0], "base64url").toString("utf8"));
      claims = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
    } catch {
      throw new AuthError("token_invalid");
    }
    if (!header || header.alg !== "HS256") throw new AuthError("token_invalid");
    const expected = createHmac("sha256", SECRET).update(`${parts[0]}.${parts[1]}`).digest();
    const given = Buffer.from(parts[2], "base64url");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw new AuthError("token_invalid");
    }
    if (claims.exp !== undefined && (typeof claims.exp !== "number" || claims.exp + LEEWAY_S < Date.now() / 1000)) {
      throw new AuthError("token_expired");
    }
    if (typeof claims.id !== "string" || !claims.id) throw new AuthError("token_invalid");
    return claims;
  }

  const httpServer = createServer(handleHttp);
  const io = new Server(httpServer, { path, cors: { origin: "*" }, adapter: createAdapter() });
  setupWorker(io);

  io.use((socket, next) => {
    try {
      const claims = verifyToken(socket.handshake.auth && socket.handshake.auth.token);
      const user = users.get(claims.id);
      if (!user) throw new AuthError("user_unknown");
      socket.data.user = user;
      next();
    } catch (err) {
      next(new Error(err instanceof AuthError ? err.message : "internal"));
    }
  });

  io.on("connection", (socket) => {
    const user = socket.data.user;
    socket.join(`user:${user.id}`);
    socket.on("user-join", (_data, ack) => {
      for (const cid of userChannels.get(user.id) || []) socket.join(`channel:${cid}`);
      if (typeof ack === "function") ack({ id: user.id, name: user.name });
    });
    socket.on("heartbeat", (...args) => {
      const ack = args[args.length - 1];
      if (typeof ack === "function") ack();
    });
    socket.on("echo", (...args) => {
      const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
      if (ack) ack(...args);
    });
    socket.on("events:channel", (data, ack) => {
      const cid = data && data.channel_id;
      const inner = data && data.data;
      const room = `channel:${cid}`;
      if (typeof cid !== "string" || !inner || typeof inner.type !== "string" || !socket.rooms.has(room)) {
        if (typeof ack === "function") ack({ error: "bad_request" });
        return;
      }
      if (inner.type === "typing") {
        io.to(room).emit("events:channel", {
          channel_id: cid,
          message_id: data.message_id ?? null,
          data: { type: "typing", data: inner.data ?? null },
          user: { id: user.id, name: user.name },
        });
      }
      if (typeof ack === "function") ack();
    });
  });

  function reply(res, code, body) {
    const text = JSON.stringify(body);
    res.writeHead(code, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
  }

  function authorized(req) {
    const h = req.headers.authorization || "";
    const want = Buffer.from(`Bearer ${API_KEY}`);
    const got = Buffer.from(h);
    return got.length === want.length && timingSafeEqual(got, want);
  }

  function handleHttp(req, res) {
    if (req.url.startsWith(path)) return; // socket.io's own request listener answers these
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      let body;
      try {
        body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : null;
      } catch (err) {
        return reply(res, 400, { error: "bad_request", message: String(err && err.message) });
      }
      route(req, res, body).catch((err) => reply(res, 500, { error: "internal", message: String(err && err.message) }));
    });
  }

  async function route(req, res, body) {
    if (req.url === "/healthz") return reply(res, 200, { ok: true });
    if (!req.url.startsWith("/api/v1/")) return reply(res, 404, { error: "not_found" });
    if (!authorized(req)) return reply(res, 401, { error: "unauthorized" });
    const parts = req.url.split("?")[0].split("/").slice(3).map(decodeURIComponent);
    if (req.method === "PUT" && parts[0] === "users" && parts.length === 2) {
      const user = { id: parts[1], name: String(body && body.name || parts[1]) };
      await replicate({ t: "user", user });
      return reply(res, 200, user);
    }
    if (req.method === "PUT" && parts[0] === "channels" && parts.length === 2) {
      const cid = parts[1];
      const members = [...new Set((body && body.members) || [])];
      await replicate({ t: "channel", cid, members });
      // live sessions of the members enter the room at once, on every worker
      io.in(members.map((u) => `user:${u}`)).socketsJoin(`channel:${cid}`);
      return reply(res, 200, { channel_id: cid, members });
    }
    if (req.method === "POST" && parts[0] === "emit" && parts.length === 1) {
      if (!body || typeof body.event !== "string") return reply(res, 400, { error: "bad_request" });
      const to = body.to || {};
      const targets = [
        ...(to.users || []).map((u) => `user:${u}`),
        ...(to.rooms || []),
        ...(to.sids || []),
      ];
      if (to.all) io.emit(body.event, body.data);
      else if (targets.length) io.to(targets).emit(body.event, body.data);
      return reply(res, 202, { ok: true });
    }
    return reply(res, 404, { error: "not_found" });
  }

  process.on("SIGTERM", () => process.exit(0));
  process.on("SIGINT", () => {}); // the primary decides
  process.send({ benchReg: "ready" });
}
