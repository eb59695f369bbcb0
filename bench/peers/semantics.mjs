// What every Node peer of the benchmark does the same way (bench/README.md lists it): the
// command line and environment, the token check, the registry of users and channels, the
// socket.io handlers and the HTTP API. Each server file (node_server.mjs on node:http,
// node_uws_server.mjs on uWebSockets.js, node_cluster_server.mjs on node:cluster) wires these
// to its transport. Only node: modules here: each server brings its own socket.io.
//
// Semantics (the same as bench/peers/pysio_uvicorn.py):
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

export const PATH = "/ws/socket.io";
const LEEWAY_S = 30;

/** The command line (--port, --host and the server's own flags) and the two secrets. */
export function settings(name) {
  const arg = (flag, fallback) => {
    const i = process.argv.indexOf(flag);
    return i >= 0 ? process.argv[i + 1] : fallback;
  };
  const secret = process.env.WEBUI_SECRET_KEY || "";
  const apiKey = process.env.RT_API_KEY || "";
  if (!secret || !apiKey) {
    process.stderr.write(`${name}: WEBUI_SECRET_KEY and RT_API_KEY are required\n`);
    process.exit(2);
  }
  return { port: Number(arg("--port", "0")), host: arg("--host", "127.0.0.1"), arg, secret, apiKey };
}

export class AuthError extends Error {}

export function verifyToken(token, secret) {
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
  const expected = createHmac("sha256", secret).update(`${parts[0]}.${parts[1]}`).digest();
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

/** Users and channel memberships; changed only by ops (a cluster replicates the ops). */
export class Registry {
  constructor() {
    this.users = new Map(); // id -> {id, name}
    this.channels = new Map(); // cid -> Set(user id)
    this.userChannels = new Map(); // user id -> Set(cid)
  }

  apply(op) {
    if (op.t === "user") this.users.set(op.user.id, op.user);
    else if (op.t === "channel") {
      const members = new Set(op.members);
      this.channels.set(op.cid, members);
      for (const uid of members) {
        if (!this.userChannels.has(uid)) this.userChannels.set(uid, new Set());
        this.userChannels.get(uid).add(op.cid);
      }
    }
  }
}

/** The connect check and the event handlers, on a socket.io server. */
export function serveEvents(io, registry, secret) {
  io.use((socket, next) => {
    try {
      const claims = verifyToken(socket.handshake.auth && socket.handshake.auth.token, secret);
      const user = registry.users.get(claims.id);
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
      for (const cid of registry.userChannels.get(user.id) || []) socket.join(`channel:${cid}`);
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
}

function authorized(header, apiKey) {
  const want = Buffer.from(`Bearer ${apiKey}`);
  const got = Buffer.from(header || "");
  return got.length === want.length && timingSafeEqual(got, want);
}

/**
 * One HTTP API request ({method, url, authorization, body}) → [status, JSON body]. A change
 * to the registry goes through `change(op)` (a cluster's worker answers once every worker
 * has it).
 */
export async function apiCall(io, apiKey, request, change) {
  const { method, url, authorization, body } = request;
  if (url === "/healthz") return [200, { ok: true }];
  if (!url.startsWith("/api/v1/")) return [404, { error: "not_found" }];
  if (!authorized(authorization, apiKey)) return [401, { error: "unauthorized" }];
  const parts = url.split("?")[0].split("/").slice(3).map(decodeURIComponent);
  if (method === "PUT" && parts[0] === "users" && parts.length === 2) {
    const user = { id: parts[1], name: String(body && body.name || parts[1]) };
    await change({ t: "user", user });
    return [200, user];
  }
  if (method === "PUT" && parts[0] === "channels" && parts.length === 2) {
    const cid = parts[1];
    const members = [...new Set((body && body.members) || [])];
    await change({ t: "channel", cid, members });
    // live sessions of the members enter the room at once (on every worker of a cluster)
    io.in(members.map((u) => `user:${u}`)).socketsJoin(`channel:${cid}`);
    return [200, { channel_id: cid, members }];
  }
  if (method === "POST" && parts[0] === "emit" && parts.length === 1) {
    if (!body || typeof body.event !== "string") return [400, { error: "bad_request" }];
    const to = body.to || {};
    const targets = [
      ...(to.users || []).map((u) => `user:${u}`),
      ...(to.rooms || []),
      ...(to.sids || []),
    ];
    if (to.all) io.emit(body.event, body.data);
    else if (targets.length) io.to(targets).emit(body.event, body.data);
    return [202, { ok: true }];
  }
  return [404, { error: "not_found" }];
}

/** The HTTP API on a node:http server's request listener (socket.io answers its own path). */
export function nodeHttpApi(io, apiKey, change) {
  const reply = (res, code, body) => {
    const text = JSON.stringify(body);
    res.writeHead(code, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
  };
  return (req, res) => {
    if (req.url.startsWith(PATH)) return;
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      let body;
      try {
        body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : null;
      } catch (err) {
        return reply(res, 400, { error: "bad_request", message: String(err && err.message) });
      }
      const request = { method: req.method, url: req.url, authorization: req.headers.authorization, body };
      apiCall(io, apiKey, request, change)
        .then(([code, answer]) => reply(res, code, answer))
        .catch((err) => reply(res, 500, { error: "internal", message: String(err && err.message) }));
    });
  };
}

/** Stop on SIGTERM/SIGINT or when stdin closes (the benchmark ends its children so). */
export function stopWith(shutdown) {
  process.stdin.on("end", shutdown);
  process.stdin.on("error", shutdown);
  process.stdin.resume();
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
}
