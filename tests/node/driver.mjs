// Long-running Node process that lets the Python tests drive real browser-side
// clients: socket.io-client 4.8 sockets and Yjs documents.
//
// Protocol: JSON lines.
//   stdin : one command per line  {"id": <any>, "cmd": "<name>", ...fields}
//   stdout: replies                {"id": <same>, "ok": true, ...result}
//                                  {"id": <same>, "ok": false, "error": "..."}
//           notifications          {"event": "<kind>", ...}
// Binary values travel as {"$bytes": [int, ...]} in both directions.
//
// The driver never exits on a bad command: it replies ok:false. It exits on the
// `exit` command or when stdin closes. Diagnostics go to stderr only.

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { io } from "socket.io-client";
import * as Y from "yjs";

// ---------------------------------------------------------------- output ---

function write(obj) {
  let line;
  try {
    line = JSON.stringify(obj);
  } catch (err) {
    line = JSON.stringify({
      id: obj && obj.id !== undefined ? obj.id : null,
      ok: false,
      error: `driver could not serialise its reply: ${err && err.message}`,
    });
  }
  process.stdout.write(line + "\n");
}

function notify(event, fields) {
  write({ event, ...fields });
}

// ------------------------------------------------------------ bytes codec ---

function isBytesMarker(v) {
  return (
    v !== null &&
    typeof v === "object" &&
    !Array.isArray(v) &&
    Array.isArray(v.$bytes) &&
    Object.keys(v).length === 1
  );
}

// Node/JS values -> JSON-safe values ({"$bytes"} for binary data).
function encode(v, depth = 0) {
  if (depth > 64) return "[too deep]";
  if (v === undefined) return null;
  if (v === null || typeof v !== "object") {
    if (typeof v === "bigint") return v.toString();
    if (typeof v === "function") return null;
    return v;
  }
  if (v instanceof ArrayBuffer) return { $bytes: Array.from(new Uint8Array(v)) };
  if (ArrayBuffer.isView(v)) {
    return { $bytes: Array.from(new Uint8Array(v.buffer, v.byteOffset, v.byteLength)) };
  }
  if (Array.isArray(v)) return v.map((x) => encode(x, depth + 1));
  if (v instanceof Error) {
    const out = { message: v.message };
    if (v.data !== undefined) out.data = encode(v.data, depth + 1);
    return out;
  }
  if (typeof v.toJSON === "function") return encode(v.toJSON(), depth + 1);
  const out = {};
  for (const [k, x] of Object.entries(v)) out[k] = encode(x, depth + 1);
  return out;
}

// JSON values -> JS values ({"$bytes"} -> Uint8Array).
function decode(v) {
  if (v === null || typeof v !== "object") return v;
  if (isBytesMarker(v)) return Uint8Array.from(v.$bytes);
  if (Array.isArray(v)) return v.map(decode);
  const out = {};
  for (const [k, x] of Object.entries(v)) out[k] = decode(x);
  return out;
}

function bytesArg(v, what) {
  if (isBytesMarker(v)) return Uint8Array.from(v.$bytes);
  if (Array.isArray(v)) return Uint8Array.from(v);
  throw new Error(`${what} must be {"$bytes": [...]}`);
}

function errText(err) {
  if (err === undefined || err === null) return String(err);
  if (typeof err !== "object") return String(err);
  let text = err.message || String(err);
  const desc = err.description;
  if (desc !== undefined && desc !== null) {
    text += ` (${typeof desc === "object" ? desc.message || desc.type || String(desc) : desc})`;
  }
  if (err.data !== undefined) {
    try {
      text += ` data=${JSON.stringify(encode(err.data))}`;
    } catch {
      text += " data=<unserialisable>";
    }
  }
  return text;
}

// --------------------------------------------------------------- helpers ---

function need(msg, field, type) {
  const v = msg[field];
  if (v === undefined || v === null) throw new Error(`missing field '${field}'`);
  if (type === "array" ? !Array.isArray(v) : type && typeof v !== type) {
    throw new Error(`field '${field}' must be ${type === "array" ? "an array" : `a ${type}`}`);
  }
  return v;
}

function packageVersion(name) {
  try {
    const url = new URL(`./node_modules/${name}/package.json`, import.meta.url);
    return JSON.parse(readFileSync(url, "utf8")).version;
  } catch {
    return null;
  }
}

// --------------------------------------------------------------- sockets ---

const sockets = new Map(); // name -> socket.io-client Socket
const heldAcks = new Map(); // name -> [ack function of each call received, in order]
const watchedEngines = new WeakSet();

function socketFor(msg) {
  const name = need(msg, "name", "string");
  const socket = sockets.get(name);
  if (!socket) throw new Error(`no client named '${name}'`);
  return socket;
}

function transportName(socket) {
  const engine = socket.io && socket.io.engine;
  return engine && engine.transport ? engine.transport.name : null;
}

function watchEngine(name, socket) {
  const engine = socket.io && socket.io.engine;
  if (!engine || watchedEngines.has(engine)) return;
  watchedEngines.add(engine);
  engine.on("upgrade", (transport) => {
    if (sockets.get(name) !== socket) return;
    notify("upgrade", { name, transport: transport && transport.name });
  });
  engine.on("upgradeError", (err) => {
    if (sockets.get(name) !== socket) return;
    notify("upgrade_error", { name, error: errText(err) });
  });
}

function dropSocket(name) {
  const socket = sockets.get(name);
  if (!socket) return false;
  sockets.delete(name);
  try {
    socket.offAny();
    // Closes the manager (and its engine) too once no namespace uses it.
    socket.disconnect();
  } catch (err) {
    process.stderr.write(`driver: error while closing '${name}': ${errText(err)}\n`);
  }
  return true;
}

function cmdConnect(msg) {
  const name = need(msg, "name", "string");
  const url = need(msg, "url", "string");
  const options = decode(msg.options || {});
  const timeoutMs = msg.timeout_ms ?? 10000;
  const keepOnError = !!msg.keep_on_error;

  const existing = sockets.get(name);
  if (existing) {
    if (existing.connected) throw new Error(`client '${name}' is already connected`);
    dropSocket(name);
  }

  const socket = io(url, options);
  sockets.set(name, socket);
  const mine = () => sockets.get(name) === socket;

  socket.onAny((ev, ...args) => {
    if (!mine()) return;
    // options.autoAck: answer every server call (an event with an ack) with
    // {answer: autoAck, got: <its arguments>}
    const last = args[args.length - 1];
    if (typeof last === "function" && options.autoAck !== undefined) {
      last({ answer: options.autoAck, got: encode(args.slice(0, -1)) });
    } else if (typeof last === "function" && options.holdAcks) {
      // options.holdAcks: keep every call's ack for the `answer` command (a user who
      // answers a dialog later, maybe while disconnected)
      heldAcks.set(name, [...(heldAcks.get(name) || []), last]);
    }
    notify("recv", { name, ev, args: encode(args) });
  });
  socket.on("disconnect", (reason, details) => {
    if (!mine()) return;
    const fields = { name, reason };
    if (details !== undefined) {
      fields.description = errText(details.description ?? details);
    }
    notify("disconnect", fields);
  });
  socket.io.on("open", () => {
    watchEngine(name, socket);
    // Transport the engine opened with (before any upgrade).
    if (mine()) notify("open", { name, transport: transportName(socket) });
  });
  socket.io.on("reconnect", (attempt) => {
    if (mine()) notify("reconnect", { name, attempt });
  });
  watchEngine(name, socket); // multiplexed manager that is already open

  return new Promise((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      if (!keepOnError && mine()) dropSocket(name);
      reject(new Error(`connect '${name}' to ${url}: no connect/connect_error within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on("connect", () => {
      watchEngine(name, socket);
      if (!mine()) return;
      if (settled) {
        notify("connect", { name, sid: socket.id, transport: transportName(socket),
                            recovered: !!socket.recovered });
        return;
      }
      settled = true;
      clearTimeout(timer);
      resolve({ sid: socket.id, transport: transportName(socket), recovered: !!socket.recovered });
    });
    socket.on("connect_error", (err) => {
      if (!mine()) return;
      const fields = { name, error: errText(err) };
      if (err && err.data !== undefined) fields.data = encode(err.data);
      if (settled) {
        notify("connect_error", fields);
        return;
      }
      settled = true;
      clearTimeout(timer);
      if (!keepOnError) dropSocket(name);
      const e = new Error(`connect_error: ${errText(err)}`);
      e.extra = { connect_error: err && err.message, data: fields.data ?? null };
      reject(e);
    });
  });
}

function cmdEmit(msg) {
  const socket = socketFor(msg);
  const ev = need(msg, "ev", "string");
  const args = decode(msg.args || []);
  if (!Array.isArray(args)) throw new Error("field 'args' must be an array");
  if (!msg.ack) {
    socket.emit(ev, ...args);
    return {};
  }
  const timeoutMs = msg.timeout_ms ?? 5000;
  // Same path as socket.timeout(ms).emitWithAck(ev, ...args) (a withError ack
  // callback), but keeps every ack argument: emitWithAck resolves with the first
  // one only, which is args[0] here.
  return new Promise((resolve, reject) => {
    socket.timeout(timeoutMs).emit(ev, ...args, (err, ...ackArgs) => {
      if (err) reject(new Error(`emit '${ev}' ack: ${errText(err)}`));
      else resolve({ args: encode(ackArgs) });
    });
  });
}

function cmdDisconnect(msg) {
  const name = need(msg, "name", "string");
  return { existed: dropSocket(name) };
}

// ------------------------------------------------------------------ yjs ---

const docs = new Map(); // name -> Y.Doc

function docFor(msg) {
  const name = need(msg, "doc", "string");
  const doc = docs.get(name);
  if (!doc) throw new Error(`no ydoc named '${name}'`);
  return doc;
}

// Runs fn(doc) in one transaction and returns the update(s) it produced.
function captureUpdate(doc, fn) {
  const updates = [];
  const onUpdate = (update) => updates.push(update);
  doc.on("update", onUpdate);
  try {
    doc.transact(() => fn(doc), "driver");
  } finally {
    doc.off("update", onUpdate);
  }
  const update = updates.length === 1 ? updates[0] : Y.mergeUpdates(updates);
  return { update: encode(update), empty: updates.length === 0 };
}

// What open-webui 0.12's note editor does when it finds a document empty
// (RichTextInput/Collaboration.ts initializeContent): its content goes into a
// fresh Y.Doc (a <paragraph> in the XmlFragment 'prosemirror'), whose state is
// sent as a list of ints with `initialize: true`; the ack is applied to the
// editor's own doc with Y.applyUpdate(doc, new Uint8Array(ack)) unless it is
// null. Replies with the seed, the ack and whether applying it threw.
function cmdInitialize(msg) {
  const socket = socketFor(msg);
  const doc = docFor(msg);
  const documentId = need(msg, "document_id", "string");
  const text = need(msg, "text", "string");
  const timeoutMs = msg.timeout_ms ?? 5000;
  const seedDoc = new Y.Doc();
  const paragraph = new Y.XmlElement("paragraph");
  paragraph.insert(0, [new Y.XmlText(text)]);
  seedDoc.getXmlFragment("prosemirror").insert(0, [paragraph]);
  const update = Array.from(Y.encodeStateAsUpdate(seedDoc));
  seedDoc.destroy();
  return new Promise((resolve, reject) => {
    socket
      .timeout(timeoutMs)
      .emit("ydoc:document:update", { document_id: documentId, update, initialize: true }, (err, state) => {
        if (err) {
          reject(new Error(`initialize ack: ${errText(err)}`));
          return;
        }
        const reply = { seed: { $bytes: update }, ack: encode(state), applied: false, apply_error: null };
        if (state) {
          try {
            Y.applyUpdate(doc, new Uint8Array(state), "server");
            reply.applied = true;
          } catch (e) {
            reply.apply_error = errText(e);
          }
        }
        resolve(reply);
      });
  });
}

const commands = {
  ping: () => ({ pong: true }),
  versions: () => ({
    node: process.versions.node,
    "socket.io-client": packageVersion("socket.io-client"),
    yjs: packageVersion("yjs"),
    "socket.io": packageVersion("socket.io"),
  }),

  connect: cmdConnect,
  emit: cmdEmit,
  transport: (msg) => {
    const socket = socketFor(msg);
    return { transport: transportName(socket), connected: socket.connected, sid: socket.id ?? null };
  },
  disconnect: cmdDisconnect,
  // answer the index-th call held (holdAcks) with `value`, connected or not
  answer: (msg) => {
    const socket = socketFor(msg);
    const ack = (heldAcks.get(msg.name) || [])[need(msg, "index", "number")];
    if (!ack) throw new Error(`no held call ${msg.index} for '${msg.name}'`);
    ack(decode(msg.value));
    return { connected: socket.connected };
  },
  clients: () => ({
    clients: [...sockets.entries()].map(([name, s]) => ({ name, connected: s.connected, sid: s.id ?? null })),
  }),

  ydoc_new: (msg) => {
    const name = need(msg, "doc", "string");
    if (docs.has(name)) throw new Error(`ydoc '${name}' already exists`);
    const opts = {};
    if (msg.gc !== undefined) opts.gc = !!msg.gc;
    const doc = new Y.Doc(opts);
    if (msg.client_id !== undefined) doc.clientID = need(msg, "client_id", "number");
    docs.set(name, doc);
    return { client_id: doc.clientID };
  },
  ydoc_drop: (msg) => {
    const name = need(msg, "doc", "string");
    const doc = docs.get(name);
    if (doc) doc.destroy();
    return { existed: docs.delete(name) };
  },
  ydoc_insert: (msg) => {
    const doc = docFor(msg);
    const textName = msg.text_name ?? "";
    const index = need(msg, "index", "number");
    const text = need(msg, "text", "string");
    return captureUpdate(doc, (d) => d.getText(textName).insert(index, text));
  },
  ydoc_delete: (msg) => {
    const doc = docFor(msg);
    const textName = msg.text_name ?? "";
    const index = need(msg, "index", "number");
    const length = need(msg, "length", "number");
    return captureUpdate(doc, (d) => d.getText(textName).delete(index, length));
  },
  ydoc_apply: (msg) => {
    const doc = docFor(msg);
    const update = bytesArg(need(msg, "update"), "update");
    Y.applyUpdate(doc, update, msg.origin ?? "remote");
    return {};
  },
  ydoc_text: (msg) => {
    const doc = docFor(msg);
    return { text: doc.getText(msg.text_name ?? "").toString() };
  },
  ydoc_state: (msg) => {
    const doc = docFor(msg);
    const sv = msg.state_vector == null ? undefined : bytesArg(msg.state_vector, "state_vector");
    return { update: encode(Y.encodeStateAsUpdate(doc, sv)) };
  },
  ydoc_initialize: cmdInitialize,
  // The editor's text as open-webui's XmlFragment 'prosemirror' holds it.
  ydoc_xml: (msg) => {
    const doc = docFor(msg);
    return { xml: doc.getXmlFragment("prosemirror").toString() };
  },
  ydoc_state_vector: (msg) => {
    const doc = docFor(msg);
    return { state_vector: encode(Y.encodeStateVector(doc)) };
  },
};

// ------------------------------------------------------------- main loop ---

let exiting = false;

function shutdown(code) {
  if (exiting) return;
  exiting = true;
  for (const name of [...sockets.keys()]) dropSocket(name);
  for (const doc of docs.values()) doc.destroy();
  docs.clear();
  // Let stdout drain, then leave even if some handle is still open.
  process.stdout.write("", () => process.exit(code));
  setTimeout(() => process.exit(code), 1000).unref();
}

async function handle(line) {
  if (!line.trim()) return;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (err) {
    write({ id: null, ok: false, error: `bad JSON: ${err.message}` });
    return;
  }
  if (msg === null || typeof msg !== "object" || Array.isArray(msg)) {
    write({ id: null, ok: false, error: "command must be a JSON object" });
    return;
  }
  const id = msg.id ?? null;
  const cmd = msg.cmd;
  if (cmd === "exit") {
    write({ id, ok: true });
    shutdown(0);
    return;
  }
  const fn = typeof cmd === "string" && Object.hasOwn(commands, cmd) ? commands[cmd] : null;
  if (!fn) {
    write({ id, ok: false, error: `unknown command ${JSON.stringify(cmd)}` });
    return;
  }
  try {
    const result = await fn(msg);
    write({ ...(result || {}), id, ok: true });
  } catch (err) {
    const reply = { id, ok: false, error: errText(err) };
    if (err && err.extra) Object.assign(reply, encode(err.extra));
    write(reply);
  }
}

process.on("uncaughtException", (err) => {
  process.stderr.write(`driver: uncaught exception: ${err && err.stack ? err.stack : err}\n`);
  notify("driver_error", { error: errText(err) });
});
process.on("unhandledRejection", (err) => {
  process.stderr.write(`driver: unhandled rejection: ${err && err.stack ? err.stack : err}\n`);
  notify("driver_error", { error: errText(err) });
});
process.stdout.on("error", () => shutdown(0)); // parent went away
process.on("SIGTERM", () => shutdown(0));

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", (line) => {
  handle(line).catch((err) => write({ id: null, ok: false, error: errText(err) }));
});
rl.on("close", () => shutdown(0));

notify("ready", { pid: process.pid, versions: commands.versions() });
