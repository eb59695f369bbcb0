// Long-running Node process through which the end-to-end tests drive Debian's headless
// Chromium (playwright-core). tests/e2e/browser.py starts it and speaks JSON lines:
//   stdin : {"id": n, "cmd": "<name>", ...fields}
//   stdout: {"id": n, "ok": true, ...result} or {"id": n, "ok": false, "error": "..."}
// Commands may overlap (two users typing at once): each reply carries its command's id.
// Every wait has a timeout (ms, default 15000). Diagnostics go to stderr.
//
// Every page records what the tests check beside the DOM: console errors, uncaught page
// errors, and its websockets with their Socket.IO frames, so that a CONNECT_ERROR packet
// ("44…") or an `error` event ("42[\"error\"…") fails the test even when the page hides it.
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

// playwright-core is installed with the other test clients in tests/node (make node-deps)
const require = createRequire(new URL("../node/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const DEFAULT_TIMEOUT = 15000;
const FRAMES_KEPT = 3000; // per websocket, the newest
const FRAME_HEAD = 600; // characters kept of the start of each frame
const FRAME_TAIL = 200; // and of its end (the last keys of a long payload)

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage"],
});
const contexts = new Map();
const pages = new Map(); // name -> {page, console, pageErrors, sockets}
const started = Date.now();
const now = () => Date.now() - started;

function frameText(payload) {
  if (typeof payload !== "string") return `<binary ${payload.length} bytes>`;
  if (payload.length <= FRAME_HEAD + FRAME_TAIL) return payload;
  return `${payload.slice(0, FRAME_HEAD)}…${payload.slice(-FRAME_TAIL)}`;
}

// Socket.IO over websocket: engine.io "4" (message) + socket.io packet type; "44" is a
// CONNECT_ERROR, "42[\"error\"" an error event of the default namespace, and an ack whose
// data is {"error": code, …} the appliance refusing an event (open-webui's own acks are
// booleans, states or {ok, …}).
function socketError(text) {
  return text.startsWith("44") || text.startsWith('42["error"') || /^43\d+\[\{"error":"/.test(text);
}

function watch(name, page) {
  const rec = { page, console: [], pageErrors: [], sockets: [] };
  page.on("console", (msg) => {
    if (msg.type() === "error") {
      const loc = msg.location();
      rec.console.push({ t: now(), text: msg.text().slice(0, 2000),
                         url: loc && loc.url ? `${loc.url}:${loc.lineNumber}` : "" });
    }
  });
  page.on("pageerror", (err) => rec.pageErrors.push({ t: now(), text: String(err).slice(0, 2000) }));
  page.on("websocket", (ws) => {
    const sock = { url: ws.url(), opened: now(), closed: null, frames: [], errors: [] };
    rec.sockets.push(sock);
    const add = (dir) => (f) => {
      const text = frameText(f.payload);
      sock.frames.push({ t: now(), dir, text });
      if (sock.frames.length > FRAMES_KEPT) sock.frames.shift();
      if (dir === "in" && socketError(text)) sock.errors.push({ t: now(), text });
    };
    ws.on("framesent", add("out"));
    ws.on("framereceived", add("in"));
    ws.on("socketerror", (e) => sock.errors.push({ t: now(), text: `socketerror ${e}` }));
    ws.on("close", () => { sock.closed = now(); });
  });
  pages.set(name, rec);
  return rec;
}

function pageOf(cmd) {
  const rec = pages.get(cmd.page);
  if (!rec) throw new Error(`no page ${cmd.page}`);
  return rec.page;
}

function locate(cmd) {
  let loc = pageOf(cmd).locator(cmd.selector);
  if (cmd.hasText !== undefined) loc = loc.filter({ hasText: cmd.hasText });
  if (cmd.nth !== undefined) loc = cmd.nth === -1 ? loc.last() : loc.nth(cmd.nth);
  return loc;
}

const timeout = (cmd) => cmd.timeout ?? DEFAULT_TIMEOUT;

// a function's source and its argument, evaluated in the page
const fnOf = (cmd) => new Function(`return (${cmd.fn});`)();

const commands = {
  async newContext(cmd) {
    // storageState: cookies and localStorage of a signed-in user (from `storageState`)
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 },
                                           baseURL: cmd.baseURL,
                                           storageState: cmd.storageState ?? undefined });
    ctx.setDefaultTimeout(DEFAULT_TIMEOUT);
    contexts.set(cmd.ctx, ctx);
    return {};
  },
  async closeContext(cmd) {
    const ctx = contexts.get(cmd.ctx);
    if (ctx) await ctx.close();
    contexts.delete(cmd.ctx);
    return {};
  },
  async storageState(cmd) {
    const ctx = contexts.get(cmd.ctx);
    if (!ctx) throw new Error(`no context ${cmd.ctx}`);
    return { state: await ctx.storageState() };
  },
  async newPage(cmd) {
    const ctx = contexts.get(cmd.ctx);
    if (!ctx) throw new Error(`no context ${cmd.ctx}`);
    watch(cmd.page, await ctx.newPage());
    return {};
  },
  async closePage(cmd) {
    await pageOf(cmd).close();
    return {};
  },
  // a slow network for the requests of the page whose URL matches `pattern` (a glob):
  // each answer reaches the page `ms` after the server gave it
  async delayResponses(cmd) {
    await pageOf(cmd).route(cmd.pattern, async (route) => {
      const response = await route.fetch();
      await new Promise((r) => setTimeout(r, cmd.ms));
      await route.fulfill({ response });
    });
    return {};
  },
  async goto(cmd) {
    const resp = await pageOf(cmd).goto(cmd.url, { timeout: timeout(cmd),
                                                   waitUntil: cmd.waitUntil ?? "load" });
    return { status: resp ? resp.status() : null };
  },
  async reload(cmd) {
    await pageOf(cmd).reload({ timeout: timeout(cmd) });
    return {};
  },
  async url(cmd) {
    return { url: pageOf(cmd).url() };
  },
  async click(cmd) {
    await locate(cmd).click({ timeout: timeout(cmd) });
    return {};
  },
  async fill(cmd) {
    await locate(cmd).fill(cmd.value, { timeout: timeout(cmd) });
    return {};
  },
  // key by key, as a person types (each key fires the page's input handlers): into the
  // element `selector` after clicking it, or without a selector where the focus is
  async type(cmd) {
    if (cmd.selector) {
      const loc = locate(cmd);
      await loc.click({ timeout: timeout(cmd) });
      await loc.pressSequentially(cmd.text, { delay: cmd.delay ?? 30, timeout: timeout(cmd) });
    } else {
      await pageOf(cmd).keyboard.type(cmd.text, { delay: cmd.delay ?? 30 });
    }
    return {};
  },
  async press(cmd) {
    if (cmd.selector) await locate(cmd).press(cmd.key, { timeout: timeout(cmd) });
    else await pageOf(cmd).keyboard.press(cmd.key);
    return {};
  },
  async waitFor(cmd) {
    await locate(cmd).waitFor({ state: cmd.state ?? "visible", timeout: timeout(cmd) });
    return {};
  },
  async count(cmd) {
    return { count: await locate(cmd).count() };
  },
  async texts(cmd) {
    return { texts: await locate(cmd).allInnerTexts() };
  },
  async evaluate(cmd) {
    return { value: await pageOf(cmd).evaluate(fnOf(cmd), cmd.arg ?? null) };
  },
  async waitFunction(cmd) {
    const handle = await pageOf(cmd).waitForFunction(fnOf(cmd), cmd.arg ?? null,
                                                     { timeout: timeout(cmd), polling: cmd.polling ?? 50 });
    return { value: await handle.jsonValue() };
  },
  async screenshot(cmd) {
    await pageOf(cmd).screenshot({ path: cmd.path, fullPage: cmd.fullPage ?? false });
    return {};
  },
  async sockets(cmd) {
    const rec = pages.get(cmd.page);
    if (!rec) throw new Error(`no page ${cmd.page}`);
    const last = cmd.frames ?? 0;
    return { now: now(), sockets: rec.sockets.map((s) => ({ url: s.url, opened: s.opened,
      closed: s.closed, errors: s.errors, frames: last ? s.frames.slice(-last) : [] })) };
  },
  // until the Socket.IO session of the page's newest websocket opened at or before `after`
  // (ms, driver clock) ends: the websocket closes, or the server sends a DISCONNECT
  // packet ("41") on it (open-webui's client then connects again on the same websocket)
  async waitSocketDisconnected(cmd) {
    const rec = pages.get(cmd.page);
    const deadline = Date.now() + timeout(cmd);
    const after = cmd.after ?? Infinity;
    for (;;) {
      const socks = rec.sockets.filter((s) => s.url.includes("/socket.io/") && s.opened <= after);
      const sock = socks[socks.length - 1];
      if (sock) {
        const bye = sock.frames.find((f) => f.dir === "in" && f.t >= (cmd.since ?? 0)
                                      && f.text.startsWith("41"));
        if (bye) return { how: "disconnect packet", at: bye.t, opened: sock.opened };
        if (sock.closed !== null) return { how: "websocket closed", at: sock.closed, opened: sock.opened };
      }
      if (Date.now() > deadline) {
        throw new Error(`socket session still up after ${timeout(cmd)} ms: ${JSON.stringify(
          rec.sockets.map((s) => ({ url: s.url, opened: s.opened, closed: s.closed })))}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  },
  // until the page's newest Socket.IO websocket is connected ("40{…}" received); a
  // CONNECT_ERROR ("44…") or a close before that fails at once with what the server said
  async waitSocketConnected(cmd) {
    const rec = pages.get(cmd.page);
    const deadline = Date.now() + timeout(cmd);
    for (;;) {
      const socks = rec.sockets.filter((s) => s.url.includes("/socket.io/"));
      const sock = socks[socks.length - 1];
      if (sock) {
        const connected = sock.frames.find((f) => f.dir === "in" && f.text.startsWith("40"));
        if (connected) return { sid: connected.text.slice(2), opened: sock.opened };
        if (sock.errors.length) throw new Error(`socket refused: ${sock.errors[0].text}`);
        if (sock.closed !== null) throw new Error(`socket closed before connecting: ${sock.url}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`no connected socket within ${timeout(cmd)} ms (${socks.length} opened)`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  },
  // until a frame of the page's websockets in direction `dir` matches the regular
  // expression `pattern`
  async waitFrame(cmd) {
    const rec = pages.get(cmd.page);
    const deadline = Date.now() + timeout(cmd);
    const re = new RegExp(cmd.pattern);
    for (;;) {
      for (const sock of rec.sockets) {
        const f = sock.frames.find((f) => f.dir === cmd.dir && f.t >= (cmd.since ?? 0)
                                   && re.test(f.text));
        if (f) return { frame: f };
      }
      if (Date.now() > deadline) {
        throw new Error(`no ${cmd.dir} frame matching /${cmd.pattern}/ within ${timeout(cmd)} ms`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  },
  async diagnostics(cmd) {
    const rec = pages.get(cmd.page);
    if (!rec) throw new Error(`no page ${cmd.page}`);
    return { console: rec.console, pageErrors: rec.pageErrors,
             socketErrors: rec.sockets.flatMap((s) => s.errors.map((e) => ({ ...e, url: s.url }))) };
  },
  async now() {
    return { now: now() };
  },
};

function write(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", async (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    write({ id: null, ok: false, error: `bad JSON: ${err.message}` });
    return;
  }
  if (cmd.cmd === "exit") {
    await browser.close();
    write({ id: cmd.id, ok: true });
    process.exit(0);
  }
  const fn = commands[cmd.cmd];
  if (!fn) {
    write({ id: cmd.id, ok: false, error: `unknown command ${cmd.cmd}` });
    return;
  }
  try {
    write({ id: cmd.id, ok: true, ...(await fn(cmd)) });
  } catch (err) {
    write({ id: cmd.id, ok: false, error: String(err && err.message ? err.message : err) });
  }
});
rl.on("close", async () => {
  await browser.close();
  process.exit(0);
});
