// The browser side of `demo_page_asks_for_a_token_and_uses_it`, run by
// `tests/browser.rs` against the server the test started: ABIDE_ADDR, and the
// tokens ABIDE_WRITER (publish and subscribe on chat, admin on *),
// ABIDE_READER (subscribe on chat), ABIDE_POSTER (publish on chat). Exits
// non-zero on any failure.
import { chromium } from "playwright-core";

const env = process.env;
const addr = env.ABIDE_ADDR, writer = env.ABIDE_WRITER, reader = env.ABIDE_READER, poster = env.ABIDE_POSTER;
const WAIT = 10_000;
const started = Date.now();
const step = (what) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${what}`);
const check = (ok, what) => { if (!ok) throw new Error(what); };

// In every page: each EventSource's URL and the ids it delivered, each
// fetch's URL and Authorization header, and any CSP violation.
function record() {
  const NativeSource = window.EventSource, nativeFetch = window.fetch;
  window.__sse = [];
  window.__fetches = [];
  window.__csp = [];
  window.EventSource = class extends NativeSource {
    constructor(url, ...rest) {
      super(url, ...rest);
      const seen = { url: String(new URL(url, location.href)), ids: [] };
      window.__sse.push(seen);
      this.addEventListener("message", (m) => seen.ids.push(Number(m.lastEventId)));
    }
  };
  window.fetch = (url, options = {}) => {
    const headers = options.headers || {};
    window.__fetches.push({ path: new URL(url, location.href).pathname, auth: headers.Authorization || null });
    return nativeFetch.call(window, url, options);
  };
  document.addEventListener("securitypolicyviolation",
    (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
}

const pages = [];
async function open(context, query = "") {
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (err) => page.problems.push(`page error: ${err.message}`));
  await page.goto(`http://${addr}/${query}`);
  pages.push(page);
  return page;
}

async function waitFor(page, what, fn, arg) {
  await page.waitForFunction(fn, arg, { timeout: WAIT }).catch(async () => {
    const shows = await page.evaluate(() => ({
      status: document.getElementById("status").textContent,
      sendError: document.getElementById("send-error").textContent,
      statsNote: document.getElementById("stats-note").textContent,
    })).catch(() => "?");
    throw new Error(`${what}: not within ${WAIT} ms; the page shows ${JSON.stringify(shows)}`);
  });
}

const statusIs = (page, state, text) => waitFor(page, `status ${state}: "${text}"`, ([s, t]) => {
  const status = document.getElementById("status");
  return status.dataset.state === s && status.textContent === t;
}, [state, text]);

const shows = (page, id, text) => waitFor(page, `#${id} "${text}"`, ([i, t]) => {
  const node = document.getElementById(i);
  return !node.hidden && node.textContent === t;
}, [id, text]);

async function useToken(page, token) {
  await page.fill("#token", token);
  await page.press("#token", "Enter");
}

async function send(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

// The id of the message with this text, once the page shows it.
async function shownId(page, text) {
  await waitFor(page, `message "${text}"`, (t) =>
    [...document.querySelectorAll("#messages .text")].some((e) => e.textContent === t), text);
  return page.evaluate((t) => Number([...document.querySelectorAll("#messages li")]
    .find((li) => li.querySelector(".text")?.textContent === t).dataset.id), text);
}

let browser;
try {
  browser = await chromium.launch({
    executablePath: env.ABIDE_CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  step(`chromium ${browser.version()} against http://${addr}`);
  const context = async () => {
    const made = await browser.newContext({ viewport: { width: 960, height: 600 } });
    await made.addInitScript(record);
    return made;
  };

  // 1. Without a token: the stream's refusal is told, the figures say
  // what they need, and nothing asks again, however long the page waits
  // (its clock run on past the longest backoff): one EventSource, one short
  // poll to learn its status, one /stats.
  const lonely = await context();
  await lonely.clock.install();
  const nobody = await open(lonely);
  await statusIs(nobody, "denied", "the server needs a token: enter one in the Token field (401)");
  await shows(nobody, "stats-note", "figures need the admin right (401)");
  check(await nobody.evaluate(() => document.body.dataset.transport) === "stream", "not on EventSource");
  await nobody.clock.runFor("02:00");
  await statusIs(nobody, "denied", "the server needs a token: enter one in the Token field (401)");
  const tries = await nobody.evaluate(() => ({
    streams: window.__sse.length,
    probes: window.__fetches.filter((f) => f.path === "/channels/chat/events").length,
    stats: window.__fetches.filter((f) => f.path === "/stats").length,
  }));
  check(tries.streams === 1 && tries.probes === 1 && tries.stats === 1,
    `the refused page kept asking: ${JSON.stringify(tries)}`);
  step("no token: 401 told, figures quiet, nothing retried in two minutes of the page's time");

  // 2. The token typed in: the page restarts its stream with ?token=
  // (escaped), keeps the token, publishes with it, and the message comes
  // back through the EventSource; the figures come with the admin right.
  const alice = await context();
  const page = await open(alice);
  await statusIs(page, "denied", "the server needs a token: enter one in the Token field (401)");
  const untokened = await page.evaluate(() => window.__fetches.length);
  await useToken(page, writer);
  await statusIs(page, "live", "live");
  const sse = await page.evaluate(() => window.__sse);
  check(sse.length === 2, `${sse.length} EventSources; expected the refused one and one with the token`);
  const url = new URL(sse[1].url);
  check(url.searchParams.get("token") === writer && !sse[1].url.includes(writer),
    `the token is not escaped in the stream's query: ${sse[1].url}`);
  check(await page.evaluate(() => localStorage.getItem("abide-demo-token")) === writer, "the token was not kept");
  await waitFor(page, "the figures", () => /^\d+ \/ \d+$/.test(document.getElementById("stat-waiters").textContent));
  check(await page.locator("#stats-note").isHidden(), "the figures' note shows with the admin right");
  step(`token set: live on ${url.pathname}?${[...url.searchParams.keys()].join("&")}, figures shown`);

  // The long-poll fallback in the same browser finds the kept token.
  const poller = await open(alice, "?transport=poll");
  check(await poller.inputValue("#token") === writer, "the poll page did not fill in the kept token");
  await statusIs(poller, "live", "live");
  check(await poller.evaluate(() => document.body.dataset.transport) === "poll", "not polling");

  await send(page, "Hello with a token.");
  await waitFor(page, "the message box cleared (201)", () => document.getElementById("text").value === "");
  const id = await shownId(page, "Hello with a token.");
  const ids = await page.evaluate(() => window.__sse[1].ids);
  check(ids.includes(id), `message ${id} did not come through the EventSource (it brought ${ids})`);
  check(await shownId(poller, "Hello with a token.") === id, "the poller shows another id");
  for (const [who, p, from] of [["stream", page, untokened], ["poll", poller, 0]]) {
    const fetches = (await p.evaluate(() => window.__fetches)).slice(from);
    check(fetches.length > 0 && fetches.every((f) => f.auth === `Bearer ${writer}`),
      `${who} page: a fetch without the token: ${JSON.stringify(fetches.filter((f) => f.auth !== `Bearer ${writer}`))}`);
  }
  step(`published from the page, received as ${id} through EventSource and the poll; every fetch carried the header`);

  // 3. A token that may publish but not read, then one that may read but
  // not publish: 403s, with the server's reasons.
  const carol = await open(await context());
  await useToken(carol, poster);
  await statusIs(carol, "denied",
    "this token may not read chat (403): token poster lacks the subscribe right on channel chat");
  await shows(carol, "stats-note", "figures need the admin right (403)");
  await useToken(carol, reader);
  await statusIs(carol, "live", "live");
  await shownId(carol, "Hello with a token.");
  await send(carol, "May I?");
  await shows(carol, "send-error",
    "Not sent: this token may not publish to chat (403): token reader lacks the publish right on channel chat");
  check(await carol.evaluate(() => document.getElementById("status").dataset.state) === "live",
    "a refused publish changed the stream's state");
  step("403s told: reading with a publish-only token, publishing with a subscribe-only one");

  for (const p of pages) {
    p.problems.push(...(await p.evaluate(() => window.__csp)).map((v) => `CSP violation: ${v}`));
  }
  const problems = pages.flatMap((p) => p.problems);
  check(problems.length === 0, `problems in the pages:\n${problems.join("\n")}`);
  await browser.close();
  step("PASS");
  process.exit(0);
} catch (err) {
  console.error(`FAIL: ${err.stack || err}`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
