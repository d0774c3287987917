// Drives abide's demo page (/) in headless Chromium with playwright-core.
//
//   node tests/browser/chat.mjs PATH/TO/abide [SCREENSHOT.png]
//
// Starts the real binary on a loopback port with a data directory, opens the
// chat in two pages (Server-Sent Events through EventSource) and checks: a
// message sent in one appears in the other within 2 s; a message with markup
// shows as text and runs nothing; after a server restart on the same port
// and directory the pages go "reconnecting" then "live" by themselves, and
// EventSource resumes with Last-Event-ID: messages published before they
// reconnect arrive, each once, with no gap; the gap note shows when the
// buffer dropped messages; a page forced to long polling works too.
// Writes a screenshot and prints its path. Exits non-zero on any failure.
// Environment: ABIDE_CHROMIUM (default /usr/bin/chromium, else `chromium` on PATH).

import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const binary = process.argv[2];
const screenshot = resolve(process.argv[3] || resolve(here, "../../target/demo-screenshot.png"));
if (!binary || !existsSync(binary)) {
  console.error("usage: node chat.mjs PATH/TO/abide [SCREENSHOT.png]");
  process.exit(2);
}

const WAIT = 20_000;            // deadline for states that involve a reconnect
const DELIVERY = 2_000;         // a message must reach the other page within this
const started = Date.now();
const step = (what) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${what}`);

function chromiumPath() {
  if (process.env.ABIDE_CHROMIUM) return process.env.ABIDE_CHROMIUM;
  if (existsSync("/usr/bin/chromium")) return "/usr/bin/chromium";
  return execFileSync("sh", ["-c", "command -v chromium"], { encoding: "utf8" }).trim();
}

// ---------------------------------------------------------------- the server

const servers = new Set();      // children still running, killed by PID on exit

function startServer(listen, extra = []) {
  return new Promise((resolveStart, reject) => {
    const child = spawn(binary, ["serve", "--listen", listen, ...extra], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    servers.add(child);
    child.log = [];
    child.exited = new Promise((done) => child.on("exit", (code, signal) => {
      servers.delete(child);
      done({ code, signal });
    }));
    let buffer = "";
    const timer = setTimeout(() => reject(new Error(`no startup line from abide within 10 s:\n${buffer}`)), 10_000);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      buffer += chunk;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        child.log.push(line);
        if (child.log.length > 200) child.log.shift();
        const m = /listening on http:\/\/(\S+)/.exec(line);
        if (m && !child.addr) {
          child.addr = m[1];
          clearTimeout(timer);
          resolveStart(child);
        }
      }
    });
    child.on("error", (err) => { clearTimeout(timer); reject(err); });
    child.exited.then(({ code, signal }) => {
      clearTimeout(timer);
      if (!child.addr) reject(new Error(`abide exited (${code ?? signal}) before listening:\n${child.log.join("\n")}${buffer}`));
    });
  });
}

async function stopServer(child) {
  child.kill("SIGTERM");
  const result = await Promise.race([
    child.exited,
    new Promise((r) => setTimeout(() => r(null), 5_000)),
  ]);
  if (!result) throw new Error("abide did not exit within 5 s of SIGTERM");
  if (result.code !== 0) throw new Error(`abide exited with ${result.code ?? result.signal} after SIGTERM`);
}

function killServers() {
  for (const child of servers) {
    try { process.kill(child.pid, "SIGKILL"); } catch { /* already gone */ }
  }
}
process.on("exit", killServers);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { killServers(); process.exit(130); });

// ------------------------------------------------------------------ the page

async function openChat(browser, base, name, query = "") {
  const context = await browser.newContext({ viewport: { width: 960, height: 600 } });
  await context.addInitScript(() => document.addEventListener("securitypolicyviolation",
    (e) => (window.__csp ||= []).push(`${e.violatedDirective} ${e.blockedURI}`)));
  // Records what each EventSource receives: a resumed stream that repeats
  // an id did not resume from Last-Event-ID.
  await context.addInitScript(() => {
    const Native = window.EventSource;
    if (!Native) return;
    window.__sse = { created: 0, ids: [] };
    window.EventSource = class extends Native {
      constructor(...args) {
        super(...args);
        window.__sse.created += 1;
        this.addEventListener("message", (m) => window.__sse.ids.push(Number(m.lastEventId)));
      }
    };
  });
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (err) => page.problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    // Refused connections during the restart are expected; CSP violations are not.
    if (msg.type() === "error" && /Content Security Policy|Refused to/i.test(msg.text())) {
      page.problems.push(`console: ${msg.text()}`);
    }
  });
  await page.goto(`http://${base}/${query}`);
  await page.fill("#name", name);
  await waitState(page, "live", WAIT);
  return page;
}

function waitState(page, state, timeout) {
  return page.waitForFunction(
    (s) => document.getElementById("status").dataset.state === s, state, { timeout },
  ).catch(async (err) => {
    const now = await page.locator("#status").textContent().catch(() => "?");
    throw new Error(`page did not show "${state}" within ${timeout} ms (it shows "${now}"): ${err.message}`);
  });
}

function texts(page) {
  return page.$$eval("#messages li:not(.empty)", (items) => items.map((li) => ({
    name: li.querySelector(".name").textContent,
    text: li.querySelector(".text").textContent,
  })));
}

async function waitMessage(page, text, timeout) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("#messages .text")].some((e) => e.textContent === t),
    text, { timeout },
  ).catch(async () => {
    throw new Error(`"${text}" did not appear within ${timeout} ms; the page shows ${JSON.stringify(await texts(page))}`);
  });
}

// Types and sends with Enter; returns once the box is cleared (the server took it).
async function send(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
  await page.waitForFunction(() => document.getElementById("text").value === "", null, { timeout: 5_000 });
}

function check(ok, what) {
  if (!ok) throw new Error(what);
}

// ------------------------------------------------------------------ the test

// The ids a page shows, in order.
function shownIds(page) {
  return page.$$eval("#messages li:not(.empty)", (items) => items.map((li) => Number(li.dataset.id)));
}

async function publish(addr, text) {
  const res = await fetch(`http://${addr}/channels/chat/events`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: "sensor", text }),
  });
  check(res.status === 201, `publish from the test: ${res.status}`);
}

let server;
let browser;
const dataDir = mkdtempSync(resolve(tmpdir(), "abide-browser-"));
process.on("exit", () => rmSync(dataDir, { recursive: true, force: true }));
try {
  server = await startServer("127.0.0.1:0", ["--data-dir", dataDir]);
  const addr = server.addr;
  step(`abide listening on http://${addr} (pid ${server.pid})`);

  browser = await chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  step(`chromium ${browser.version()}`);
  const alice = await openChat(browser, addr, "alice");
  const bob = await openChat(browser, addr, "bob");
  for (const page of [alice, bob]) {
    const transport = await page.evaluate(() => document.body.dataset.transport);
    check(transport === "stream", `the page uses ${transport}, not EventSource`);
  }
  step("two pages live, on Server-Sent Events");

  // 1. A message typed in one page appears in the other within 2 s.
  let t0 = Date.now();
  await send(alice, "Hi Bob, this travels by Server-Sent Events.");
  await waitMessage(bob, "Hi Bob, this travels by Server-Sent Events.", DELIVERY - (Date.now() - t0));
  step(`alice -> bob in ${Date.now() - t0} ms`);
  t0 = Date.now();
  await send(bob, "Got it, no WebSocket needed.");
  await waitMessage(alice, "Got it, no WebSocket needed.", DELIVERY - (Date.now() - t0));
  step(`bob -> alice in ${Date.now() - t0} ms`);
  // Bob's page shows his own message once its poll brings it back.
  await waitMessage(bob, "Got it, no WebSocket needed.", DELIVERY);
  const seen = await texts(bob);
  check(seen.some((m) => m.name === "alice") && seen.some((m) => m.name === "bob"), `names not shown: ${JSON.stringify(seen)}`);

  // 2. Markup in a message is shown as text and runs nothing.
  const nasty = `<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> <b>bold?</b>`;
  t0 = Date.now();
  await send(alice, nasty);
  await waitMessage(bob, nasty, DELIVERY - (Date.now() - t0));
  await waitMessage(alice, nasty, DELIVERY);
  for (const [who, page] of [["alice", alice], ["bob", bob]]) {
    const verdict = await page.evaluate(() => ({
      pwned: window.__pwned,
      elements: document.querySelectorAll("#messages script, #messages img, #messages b").length,
    }));
    check(verdict.pwned === undefined, `${who}: a script in a message ran (__pwned=${verdict.pwned})`);
    check(verdict.elements === 0, `${who}: message markup became ${verdict.elements} element(s)`);
  }
  step("markup shown as text, nothing ran");

  // 3. Restart the server on the same port: the pages reconnect by themselves.
  await stopServer(server);
  step("server stopped (SIGTERM, exit 0)");
  await Promise.all([waitState(alice, "reconnecting", WAIT), waitState(bob, "reconnecting", WAIT)]);
  step("both pages show reconnecting");
  const before = await shownIds(alice);
  server = await startServer(addr, ["--buffer", "8", "--data-dir", dataDir]);
  step(`server started again on ${server.addr} (pid ${server.pid}), same data directory`);
  // Published before the pages are back (EventSource waits retry: 2 s).
  for (let i = 1; i <= 3; i++) await publish(addr, `while you were away ${i}`);
  await Promise.all([waitState(alice, "live", WAIT), waitState(bob, "live", WAIT)]);
  step("both pages live again");
  for (const [who, page] of [["alice", alice], ["bob", bob]]) {
    await waitMessage(page, "while you were away 3", WAIT);
    const ids = await shownIds(page);
    check(new Set(ids).size === ids.length, `${who}: a message shown twice: ${ids}`);
    check(ids.every((id, i) => i === 0 || ids[i - 1] < id), `${who}: out of order: ${ids}`);
    check(await page.locator("#missed").isHidden(), `${who}: a gap was announced, but nothing was lost`);
  }
  check((await shownIds(alice)).length === before.length + 3, "alice: not exactly the three new messages");
  for (const [who, page] of [["alice", alice], ["bob", bob]]) {
    const sse = await page.evaluate(() => window.__sse);
    check(sse.created === 1, `${who}: ${sse.created} EventSources; the first should have reconnected by itself`);
    check(new Set(sse.ids).size === sse.ids.length, `${who}: the stream repeated ids after reconnecting: ${sse.ids}`);
  }
  step("EventSource resumed after the restart: every message once, no gap");
  t0 = Date.now();
  await send(bob, "Still here after the restart.");
  await waitMessage(alice, "Still here after the restart.", DELIVERY);
  step(`message after restart delivered in ${Date.now() - t0} ms`);
  await waitMessage(bob, "Still here after the restart.", DELIVERY);

  // The stats panel refreshes by itself and shows the new server's figures
  // (one event published since the restart, the pages' polls waiting).
  await alice.waitForFunction(() => {
    const waiting = /^(\d+) \/ \d+$/.exec(document.getElementById("stat-waiters").textContent);
    return waiting && Number(waiting[1]) >= 1
      && Number(document.getElementById("stat-published").textContent) >= 1;
  }, null, { timeout: WAIT }).catch(() => { throw new Error("the stats panel did not refresh"); });
  step("stats panel refreshed");

  mkdirSync(dirname(screenshot), { recursive: true });
  const box = await alice.locator("main").boundingBox();
  await alice.screenshot({ path: screenshot, clip: { x: 0, y: 0, width: 960, height: Math.ceil(box.y + box.height) } });
  step(`screenshot: ${screenshot}`);

  // 4. A page that starts after the buffer dropped messages says so.
  for (let i = 1; i <= 10; i++) await publish(addr, `reading ${i}`);
  const carol = await openChat(browser, addr, "carol");
  await waitMessage(carol, "reading 10", WAIT);
  await carol.locator("#missed").waitFor({ state: "visible", timeout: WAIT });
  const shown = (await texts(carol)).length;
  check(shown === 8, `a fresh page shows ${shown} messages, expected the buffer's 8`);
  step("a fresh page shows the buffer's 8 messages and the gap note");

  // 5. A page forced to long polling (what a browser without EventSource
  // gets) chats too.
  const dave = await openChat(browser, addr, "dave", "?transport=poll");
  check(await dave.evaluate(() => document.body.dataset.transport) === "poll", "dave is not polling");
  t0 = Date.now();
  await send(dave, "Polling still works.");
  await waitMessage(alice, "Polling still works.", DELIVERY);
  await send(alice, "And back to the poller.");
  await waitMessage(dave, "And back to the poller.", DELIVERY);
  step(`a long-polling page and a streaming page chat (${Date.now() - t0} ms)`);

  for (const page of [alice, bob, carol, dave]) {
    const csp = await page.evaluate(() => window.__csp || []);
    page.problems.push(...csp.map((v) => `CSP violation: ${v}`));
  }
  const problems = [alice, bob, carol, dave].flatMap((p) => p.problems);
  check(problems.length === 0, `problems in the pages:\n${problems.join("\n")}`);

  await browser.close();
  browser = null;
  await stopServer(server);
  step("PASS");
  process.exit(0);
} catch (err) {
  console.error(`FAIL: ${err.stack || err}`);
  if (server) console.error(`abide's last log lines:\n${server.log.slice(-40).join("\n")}`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
