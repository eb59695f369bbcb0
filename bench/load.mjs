// Load generator worker for bench/run.py: real socket.io-client 4.8 sockets in one Node
// process, driven by JSON lines.
//
//   stdin : {"id": N, "cmd": "<name>", ...fields}      one command at a time
//   stdout: {"id": N, "ok": true, ...result} | {"id": N, "ok": false, "error": "..."}
//
// Timestamps are microseconds of CLOCK_MONOTONIC (process.hrtime), which is the same clock in
// every process of the machine, so a send time written into a payload by one worker can be
// compared with the receive time in another. Latencies are kept in log-scale histograms
// (0.5 % resolution), merged by the runner. The worker exits when stdin closes.

import { createHmac } from "node:crypto";
import { createRequire } from "node:module";
import http from "node:http";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "..", "tests", "node", "package.json"));
const { io } = require("socket.io-client");
const Y = require("yjs");

const SECRET = process.env.WEBUI_SECRET_KEY || "";

// ------------------------------------------------------------------ helpers ---

function nowUs() {
  const [s, ns] = process.hrtime();
  return s * 1e6 + ns / 1e3;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const B64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
const JWT_HEADER = B64({ alg: "HS256", typ: "JWT" });
function token(userId, ttlS = 3600) {
  const body = B64({ id: userId, exp: Math.floor(Date.now() / 1000) + ttlS });
  const sig = createHmac("sha256", SECRET).update(`${JWT_HEADER}.${body}`).digest("base64url");
  return `${JWT_HEADER}.${body}.${sig}`;
}

class Hist {
  constructor() { this.b = new Map(); this.n = 0; }
  add(us) {
    const i = Math.round(Math.log(Math.max(us, 1)) * 200);
    this.b.set(i, (this.b.get(i) || 0) + 1);
    this.n += 1;
  }
  toJSON() { return Object.fromEntries(this.b); }
}

function countError(errors, msg) {
  const key = String(msg).slice(0, 120);
  errors[key] = (errors[key] || 0) + 1;
}

// -------------------------------------------------------------------- state ---

let clients = []; // {sock, user}
const listening = new Set(); // event names with a handler on every client
let rx = null; // current receive phase

function newRx(phase) {
  return { phase, count: 0, hist: new Hist(), first: 0, last: 0, foreign: 0 };
}

function onDelivery(msg) {
  const t = nowUs();
  const inner = msg && msg.data && msg.data.data;
  if (!rx || !inner || inner.ph !== rx.phase) {
    if (rx) rx.foreign += 1;
    return;
  }
  rx.count += 1;
  rx.hist.add(t - inner.ts);
  if (!rx.first) rx.first = t;
  rx.last = t;
}

function listenOn(sock, event) { sock.on(event, onDelivery); }

// ----------------------------------------------------------------- commands ---

async function connectOne(url, path, user, timeoutMs) {
  return new Promise((resolve) => {
    const sock = io(url, {
      path, transports: ["websocket"], auth: { token: token(user) },
      forceNew: true, reconnection: false, timeout: timeoutMs,
    });
    // socket.io-client's `timeout` covers the Engine.IO handshake only: a namespace CONNECT
    // that the server never answers would wait for ever, so the whole connect has a limit too
    const timer = setTimeout(() => done("connect timeout (no CONNECT answer)"), timeoutMs + 5000);
    const done = (err) => {
      clearTimeout(timer);
      sock.off("connect"); sock.off("connect_error");
      resolve(err ? { err, sock } : { sock });
    };
    sock.on("connect", () => done(null));
    sock.on("connect_error", (e) => done(e && e.message ? e.message : String(e)));
  });
}

const commands = {
  hello() { return { pid: process.pid, node: process.version }; },

  // Connect one client per user id with at most `concurrency` handshakes in flight.
  async connect({ url, path, users, concurrency = 50, timeout_ms = 20000 }) {
    const errors = {};
    let next = 0, connected = 0, failed = 0;
    const t0 = nowUs();
    async function lane() {
      while (next < users.length) {
        const user = users[next++];
        const r = await connectOne(url, path, user, timeout_ms);
        if (r.err) {
          failed += 1; countError(errors, r.err); r.sock.close();
        } else {
          connected += 1;
          for (const ev of listening) listenOn(r.sock, ev);
          clients.push({ sock: r.sock, user });
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, users.length) }, lane));
    const t1 = nowUs();
    const ws = clients.length ? clients[clients.length - 1].sock.io.engine.transport.ws : null;
    return { connected, failed, errors, t0, t1, total: clients.length,
             extensions: ws && ws._socket ? ws.extensions || "" : null };
  },

  // Every client emits `event` with an ack; waits for all acks.
  async emit_all({ event, data = {}, timeout_ms = 20000, concurrency = 200 }) {
    const errors = {};
    let acked = 0, failed = 0, next = 0;
    async function lane() {
      while (next < clients.length) {
        const c = clients[next++];
        try {
          const r = await c.sock.timeout(timeout_ms).emitWithAck(event, data);
          if (r && r.error) { failed += 1; countError(errors, r.error); } else acked += 1;
        } catch (e) { failed += 1; countError(errors, e.message || e); }
      }
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, clients.length) }, lane));
    return { acked, failed, errors };
  },

  listen({ event, phase }) {
    if (!listening.has(event)) {
      listening.add(event);
      for (const c of clients) listenOn(c.sock, event);
    }
    rx = newRx(phase);
    return {};
  },

  // Wait until `expected` deliveries of the phase arrived, nothing arrived for quiet_ms,
  // or timeout_ms passed.
  async wait_rx({ expected, timeout_ms = 10000, quiet_ms = 1000 }) {
    const deadline = Date.now() + timeout_ms;
    let last = rx.count, lastChange = Date.now();
    while (rx.count < expected && Date.now() < deadline) {
      await sleep(20);
      if (rx.count !== last) { last = rx.count; lastChange = Date.now(); }
      else if (Date.now() - lastChange > quiet_ms) break;
    }
    return { count: rx.count };
  },

  collect() {
    const r = rx;
    rx = null;
    return { count: r.count, hist: r.hist, first: r.first, last: r.last, foreign: r.foreign };
  },

  // Acked requests at a fixed rate from the first `clients` clients (open loop: a slow
  // server does not slow the offered rate down).
  async rtt({ event, data = {}, clients: k, rate_per_client, duration_ms, timeout_ms = 5000 }) {
    const senders = clients.slice(0, k);
    const hist = new Hist();
    const errors = {};
    let sent = 0, acked = 0, failed = 0, pending = 0, maxUs = 0;
    const interval = 1000 / rate_per_client;
    const t0 = nowUs();
    const stopAt = Date.now() + duration_ms;
    const timers = senders.map((c, i) => new Promise((resolve) => {
      const start = Date.now() + (interval * i) / senders.length;
      let n = 0;
      const tick = () => {
        if (Date.now() >= stopAt) return resolve();
        const ts = nowUs();
        sent += 1; pending += 1;
        c.sock.timeout(timeout_ms).emit(event, data, (err, res) => {
          pending -= 1;
          if (err || (res && res.error)) { failed += 1; countError(errors, err ? err.message : res.error); return; }
          acked += 1;
          const us = nowUs() - ts;
          hist.add(us);
          if (us > maxUs) maxUs = us;
        });
        n += 1;
        setTimeout(tick, Math.max(0, start + n * interval - Date.now()));
      };
      setTimeout(tick, Math.max(0, start - Date.now()));
    }));
    await Promise.all(timers);
    const t1 = nowUs();
    const drainUntil = Date.now() + timeout_ms + 500;
    while (pending > 0 && Date.now() < drainUntil) await sleep(10);
    return { sent, acked, failed, errors, hist, t0, t1, lost: pending, max_us: maxUs };
  },

  // Saturated acked round trips (closed loop): each of the first `clients` clients keeps
  // `inflight` requests in flight, sending the next as soon as an ack arrives, until
  // duration_ms has passed; then the outstanding ones are waited for (at most timeout_ms;
  // what has not come back by then is `lost`). Plain ack callbacks, no timer per request,
  // so the generator spends as little as it can per round trip.
  async echo({ event, data = {}, clients: k, inflight = 10, duration_ms, timeout_ms = 10000 }) {
    const senders = clients.slice(0, k);
    const hist = new Hist();
    const errors = {};
    let sent = 0, acked = 0, failed = 0, pending = 0;
    const t0 = nowUs();
    const stopAt = Date.now() + duration_ms;
    const lanes = [];
    for (const c of senders) {
      for (let j = 0; j < inflight; j += 1) {
        lanes.push(new Promise((resolve) => {
          const fire = () => {
            if (Date.now() >= stopAt || !c.sock.connected) return resolve();
            const ts = nowUs();
            sent += 1; pending += 1;
            c.sock.emit(event, data, (res) => {
              pending -= 1;
              if (res && res.error) { failed += 1; countError(errors, res.error); } else {
                acked += 1;
                hist.add(nowUs() - ts);
              }
              fire();
            });
          };
          fire();
        }));
      }
    }
    let timer;
    await Promise.race([Promise.all(lanes),
                        new Promise((r) => { timer = setTimeout(r, duration_ms + timeout_ms); })]);
    clearTimeout(timer);
    const t1 = nowUs();
    return { sent, acked, failed, errors, hist, t0, t1, lost: pending };
  },

  // POST /api/v1/emit. mode "rate": `rate` requests/s for duration_ms; mode "closed":
  // `count` requests with `concurrency` in flight. The payload carries the send time.
  async http_emit({ url, api_key, room, event = "events", phase, mode, rate, duration_ms,
                    count, concurrency = 4, timeout_ms = 10000 }) {
    const target = new URL("/api/v1/emit", url);
    const agent = new http.Agent({ keepAlive: true, maxSockets: Math.max(concurrency, 8) });
    const errors = {};
    let sent = 0, accepted = 0, failed = 0;
    const post = () => new Promise((resolve) => {
      const body = JSON.stringify({
        event, to: { rooms: [room] },
        data: { chat_id: "bench-chat", message_id: `m${sent}`,
                data: { type: "chat:message:delta", data: { content: "Hello from the benchmark", ts: nowUs(), ph: phase } } },
      });
      sent += 1;
      const req = http.request(target, {
        method: "POST", agent, timeout: timeout_ms,
        headers: { authorization: `Bearer ${api_key}`, "content-type": "application/json",
                   "content-length": Buffer.byteLength(body) },
      }, (res) => {
        res.resume();
        res.on("end", () => {
          if (res.statusCode === 202) accepted += 1; else { failed += 1; countError(errors, `HTTP ${res.statusCode}`); }
          resolve();
        });
      });
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", (e) => { failed += 1; countError(errors, e.message); resolve(); });
      req.end(body);
    });
    const t0 = nowUs();
    if (mode === "rate") {
      const interval = 1000 / rate, start = Date.now(), inflight = [];
      for (let n = 0; Date.now() - start < duration_ms; n += 1) {
        const wait = start + n * interval - Date.now();
        if (wait > 0) await sleep(wait);
        inflight.push(post());
      }
      await Promise.all(inflight);
    } else {
      let left = count;
      async function lane() { while (left > 0) { left -= 1; await post(); } }
      await Promise.all(Array.from({ length: concurrency }, lane));
    }
    const t1 = nowUs();
    agent.destroy();
    return { sent, accepted, failed, errors, t0, t1 };
  },

  // Typing events from the first `senders` clients of this worker. mode "rate": each sender
  // `rate` events/s for duration_ms, without ack (as the browser sends them); mode "closed":
  // each sender `count` events, the next after the ack of the previous one.
  async typing({ channel, senders: k, phase, mode, rate, duration_ms, count, timeout_ms = 10000 }) {
    const senders = clients.slice(0, k);
    const errors = {};
    let sent = 0, failed = 0;
    const payload = () => ({ channel_id: channel, data: { type: "typing", data: { ts: nowUs(), ph: phase } } });
    const t0 = nowUs();
    if (mode === "rate") {
      const interval = 1000 / rate, stopAt = Date.now() + duration_ms;
      await Promise.all(senders.map((c, i) => new Promise((resolve) => {
        const start = Date.now() + (interval * i) / senders.length;
        let n = 0;
        const tick = () => {
          if (Date.now() >= stopAt) return resolve();
          c.sock.emit("events:channel", payload());
          sent += 1; n += 1;
          setTimeout(tick, Math.max(0, start + n * interval - Date.now()));
        };
        setTimeout(tick, Math.max(0, start - Date.now()));
      })));
    } else {
      await Promise.all(senders.map(async (c) => {
        for (let n = 0; n < count; n += 1) {
          sent += 1;
          try {
            const r = await c.sock.timeout(timeout_ms).emitWithAck("events:channel", payload());
            if (r && r.error) { failed += 1; countError(errors, r.error); }
          } catch (e) { failed += 1; countError(errors, e.message || e); }
        }
      }));
    }
    const t1 = nowUs();
    return { sent, failed, errors, t0, t1 };
  },

  // One client floods for duration_ms (bench/flood.py): `kind` "typing" (events:channel
  // typing), "yjs" (ydoc:document:update of a joined note, real Yjs updates), "garbage"
  // (bursts of 200 events the server refuses, each ended by a malformed Socket.IO packet,
  // which closes the connection). Events are emitted in bursts of `burst` as long as the socket's
  // unsent output stays under max_buffered bytes (what the server does not read stays here);
  // a connection the server closes is opened again.
  async flood({ url, path, user, kind, channel, document_id, duration_ms, burst = 20000,
                max_buffered = 4 << 20, timeout_ms = 10000 }) {
    const stopAt = Date.now() + duration_ms;
    const reasons = {};
    let written = 0, connects = 0, buffered = 0;
    const ydoc = new Y.Doc();
    const text = ydoc.getText("t");
    let lastUpdate = null;
    ydoc.on("update", (u) => { lastUpdate = u; });
    while (Date.now() < stopAt) {
      const r = await connectOne(url, path, user, timeout_ms);
      if (r.err) { countError(reasons, `connect: ${r.err}`); r.sock.close(); await sleep(100); continue; }
      connects += 1;
      const sock = r.sock;
      let closed = false;
      sock.on("disconnect", (reason, details) => {
        closed = true;
        // the websocket's close code and reason when the server closed it (1008 inbound flood)
        const ev = details && details.context;
        countError(reasons, ev && ev.code ? `${reason} ${ev.code} ${ev.reason || ""}`.trim() : reason);
      });
      if (kind === "yjs") {
        try {
          await sock.timeout(timeout_ms).emitWithAck("ydoc:document:join", { document_id });
        } catch (e) { countError(reasons, `join: ${e.message || e}`); }
      }
      const ws = () => sock.io.engine && sock.io.engine.transport && sock.io.engine.transport.ws;
      const unsent = () => { const w = ws(); return w ? w.bufferedAmount : 0; };
      // garbage: the malformed packet after a short burst, or it would never be read
      const size = kind === "garbage" ? Math.min(burst, 200) : burst;
      while (!closed && Date.now() < stopAt) {
        if (unsent() < max_buffered) {
          for (let i = 0; i < size && !closed; i += 1) {
            if (kind === "typing") {
              sock.emit("events:channel", { channel_id: channel, data: { type: "typing", data: { n: i } } });
            } else if (kind === "yjs") {
              text.insert(text.length % 64, "x"); // one keystroke: one small incremental update
              sock.emit("ydoc:document:update", { document_id, update: Array.from(lastUpdate) });
            } else {
              sock.emit(i % 2 ? "no-such-event" : "events:channel", { channel_id: 12345, junk: "\u0000".repeat(i % 50) });
            }
            written += 1;
            if (i % 1000 === 999) await sleep(0); // let the socket write between chunks
          }
          if (kind === "garbage" && !closed) { sock.io.engine.write("4{not socket.io"); written += 1; }
        }
        await sleep(20);
      }
      buffered = unsent();
      sock.removeAllListeners("disconnect");
      sock.disconnect();
      if (closed) await sleep(50);
    }
    return { written, connects, reasons, buffered_at_end: buffered };
  },

  async disconnect({ wait_ms = 3000 } = {}) {
    const n = clients.length;
    for (const c of clients) c.sock.disconnect();
    clients = [];
    rx = null;
    await sleep(Math.min(wait_ms, 50 + n / 20)); // let the close frames go out
    return { closed: n };
  },

  usage() {
    const u = process.cpuUsage();
    return { user_us: u.user, system_us: u.system, rss: process.memoryUsage().rss };
  },
};

// ------------------------------------------------------------------- driver ---

function write(obj) { process.stdout.write(JSON.stringify(obj) + "\n"); }

const rl = createInterface({ input: process.stdin });
let queue = Promise.resolve();
rl.on("line", (line) => {
  let msg;
  try { msg = JSON.parse(line); } catch { write({ id: null, ok: false, error: "bad json" }); return; }
  queue = queue.then(async () => {
    const fn = commands[msg.cmd];
    if (!fn) return write({ id: msg.id, ok: false, error: `unknown command ${msg.cmd}` });
    try {
      write({ id: msg.id, ok: true, ...(await fn(msg)) });
    } catch (e) {
      write({ id: msg.id, ok: false, error: String((e && e.stack) || e) });
    }
  });
});
rl.on("close", () => {
  for (const c of clients) c.sock.disconnect();
  setTimeout(() => process.exit(0), 200);
});
process.on("SIGTERM", () => process.exit(0));
