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
// Semantics (same as bench/peers/node_server.mjs):
//   connect       auth {token}: HS256 JWT verified with node:crypto (signature, exp with 30 s
//                 leeway, `id` required), user must be registered; joins `user:{id}`
//   user-join     joins `channel:{cid}` for every channel the user is a member of; ack {id, name}
//   heartbeat     ack with no arguments
//   echo          ack with the same arguments
//   events:channel {channel_id, data: {type: "typing", data}}: sender must be in the room;
//                 `events:channel` {channel_id, message_id, data, user: {id, name}} to the room
//                 (sender included)
//   HTTP (Bearer API key): PUT /api/v1/users/{id} {name}; PUT /api/v1/channels/{cid}
//                 {members}; POST /api/v1/emit {event, data, to: {rooms, users, sids}};
//                 GET /healthz

import { createHmac, timingSafeEqual } from "node:crypto";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "package.json"));
const { Server } = require("socket.io");
const uWS = require("uwebsockets");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const port = Number(arg("--port", "0"));
const host = arg("--host", "127.0.0.1");
const path = "/ws/socket.io";
const SECRET = process.env.WEBUI_SECRET_KEY || "";
const API_KEY = process.env.RT_API_KEY || "";
const LEEWAY_S = 30;
if (!SECRET || !API_KEY) {
  process.stderr.write("node_uws_server: WEBUI_SECRET_KEY and RT_API_KEY are required\n");
  process.exit(2);
}

const users = new Map(); // id -> {id, name}
const channels = new Map(); // cid -> Set(user id)
const userChannels = new Map(); // user id -> Set(cid)

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

const app = uWS.App();
const io = new Server({ path, cors: { origin: "*" } });
io.attachApp(app);

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

// ------------------------------------------------------------- HTTP on the uWS app ---

const STATUS = { 200: "200 OK", 202: "202 Accepted", 400: "400 Bad Request", 401: "401 Unauthorized", 404: "404 Not Found" };

function reply(res, code, body) {
  if (res.aborted) return;
  const text = JSON.stringify(body);
  res.cork(() => {
    res.writeStatus(STATUS[code] || `${code} Status`).writeHeader("content-type", "application/json").end(text);
  });
}

function authorized(header) {
  const want = Buffer.from(`Bearer ${API_KEY}`);
  const got = Buffer.from(header || "");
  return got.length === want.length && timingSafeEqual(got, want);
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
    try {
      route(res, method, url, auth, raw.length ? JSON.parse(raw.toString("utf8")) : null);
    } catch (err) {
      reply(res, 400, { error: "bad_request", message: String(err && err.message) });
    }
  };
  if (!hasBody) return finish(Buffer.alloc(0));
  const chunks = [];
  res.onData((chunk, isLast) => {
    chunks.push(Buffer.from(chunk.slice(0)));
    if (isLast) finish(Buffer.concat(chunks));
  });
});

function route(res, method, url, auth, body) {
  if (url === "/healthz") return reply(res, 200, { ok: true });
  if (!url.startsWith("/api/v1/")) return reply(res, 404, { error: "not_found" });
  if (!authorized(auth)) return reply(res, 401, { error: "unauthorized" });
  const parts = url.split("/").slice(3).map(decodeURIComponent);
  if (method === "PUT" && parts[0] === "users" && parts.length === 2) {
    const user = { id: parts[1], name: String(body && body.name || parts[1]) };
    users.set(user.id, user);
    return reply(res, 200, user);
  }
  if (method === "PUT" && parts[0] === "channels" && parts.length === 2) {
    const cid = parts[1];
    const members = new Set((body && body.members) || []);
    channels.set(cid, members);
    for (const uid of members) {
      if (!userChannels.has(uid)) userChannels.set(uid, new Set());
      userChannels.get(uid).add(cid);
    }
    // live sessions of the members enter the room at once
    io.in([...members].map((u) => `user:${u}`)).socketsJoin(`channel:${cid}`);
    return reply(res, 200, { channel_id: cid, members: [...members] });
  }
  if (method === "POST" && parts[0] === "emit" && parts.length === 1) {
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
  process.stdout.write(`listening on http://${host}:${uWS.us_socket_local_port(token)}${path}\n`);
});
process.stdin.on("end", shutdown);
process.stdin.on("error", shutdown);
process.stdin.resume();
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
