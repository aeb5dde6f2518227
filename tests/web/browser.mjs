// mqtt.js inside headless Chromium, for tests/browser.rs: the browser
// bundle (node_modules/mqtt/dist/mqtt.min.js), loaded by a page this script
// serves on 127.0.0.1, speaks MQTT over WSS to the real gateway through
// Chromium's own TLS and WebSocket stack, as a web HMI would.
//
//     node browser.mjs SPEC_JSON
//
// SPEC_JSON:
//
//     { "chromium": "/usr/bin/chromium", "url": "wss://localhost:PORT/mqtt",
//       "ca": "…/keys/tls/ca.crt", "wait_ms": 20000, "untrusted_control": true,
//       "clients": [ { "id": "browser-5", "version": 5, "token": "…",
//                      "subscribe": "browser/#", "refused": "other/#",
//                      "publish": "browser/5/hello", "payload": "…",
//                      "await": ["browser/5/hello", "browser/from-device"] } ] }
//
// Each client, all at once in one page: CONNECT (username JWT, the token
// as password, protocolVersion 4 or 5), SUBSCRIBE `subscribe` at QoS 1,
// SUBSCRIBE `refused` at QoS 1, PUBLISH `payload` to `publish` at QoS 1,
// then wait up to wait_ms for a message on every topic in `await`. The
// codes are read off the packets as they arrive (mqtt.js's packetreceive),
// not from its callbacks, so what is reported is what the gateway sent.
//
// With untrusted_control, one more Chromium with a profile that does NOT
// trust the development CA tries the first client's CONNECT: it must fail
// on the certificate (net::ERR_CERT_AUTHORITY_INVALID), which shows that
// the trusted run's TLS was verified, not waved through.
//
// Prints one JSON line on stdout:
//
//     { "browser": "Chrome/…", "clients": [ { "id", "version", "connack",
//       "suback": { FILTER: [codes] }, "puback", "received": [ { "topic",
//       "payload", "qos", "retain" } ], "error" } ], "console": [lines],
//       "untrusted": { "connected": false, "error", "net_error": "ERR_…",
//                      "console": [lines] } }
//
// (connack, puback: null when none came; error: null, or why the page
// stopped early; console: what Chromium logged in the page.)
//
// What the gateway answered is for the test to judge. This script exits
// non-zero, with the reason on stderr, only when it could not run the
// exchange at all (no Chromium, no certutil, the page could not load
// mqtt.js, a deadline of its own passed); the browser is always closed.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

const here = dirname(fileURLToPath(import.meta.url));
const bundle = join(here, "node_modules", "mqtt", "dist", "mqtt.min.js");

if (process.argv.length !== 3) {
  process.stderr.write("usage: node browser.mjs SPEC_JSON\n");
  process.exit(2);
}
const spec = JSON.parse(process.argv[2]);
const waitMs = spec.wait_ms ?? 20_000;

const homes = [];
const browsers = [];
let server;

async function cleanUp() {
  await Promise.allSettled(browsers.map((browser) => browser.close()));
  for (const home of homes) rmSync(home, { recursive: true, force: true });
  server?.close();
}

// The whole run, Chromium's starts included, on a loaded machine. Past it
// the script gives up with a message rather than leave the test hanging,
// closing what it can within a few seconds (puppeteer kills a browser
// left over when the process exits).
const overall = setTimeout(async () => {
  process.stderr.write(`browser.mjs: no result within ${3 * waitMs} ms\n`);
  await Promise.race([cleanUp(), new Promise((resolve) => setTimeout(resolve, 5000))]);
  process.exit(3);
}, 3 * waitMs);
overall.unref();

// The CA is trusted the way a user trusts it: imported into the NSS
// database Chromium reads on Linux ($HOME/.pki/nssdb), here for a
// throw-away HOME. Chromium then verifies the gateway's chain to that CA,
// the name `localhost` and the validity period, exactly as for any site.
// The alternative, --ignore-certificate-errors-spki-list with the server
// key's hash, skips that verification for the pinned key: a certificate
// for the wrong name, expired, or not issued by the CA would pass too.
function profile(trustCa) {
  const home = mkdtempSync(join(tmpdir(), "jwtgate-chromium-"));
  const nssdb = join(home, ".pki", "nssdb");
  mkdirSync(nssdb, { recursive: true });
  const certutil = (...args) => {
    try {
      execFileSync("certutil", ["-d", `sql:${nssdb}`, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    } catch (err) {
      throw new Error(
        err.code === "ENOENT"
          ? "certutil not found: install the Debian package libnss3-tools"
          : `certutil ${args.join(" ")}: ${err.stderr?.toString().trim() || err.message}`,
      );
    }
  };
  // The control's profile has a database too, only without the CA, so
  // the CA is the one difference between the two.
  certutil("-N", "--empty-password");
  if (trustCa) certutil("-A", "-t", "C,,", "-n", "jwtgate-dev", "-i", spec.ca);
  return home;
}

async function launch(home) {
  return puppeteer.launch({
    executablePath: spec.chromium ?? "/usr/bin/chromium",
    // headless: true is --headless=new, the only headless mode Chromium
    // has had since 132 (what a plain --headless means there too).
    headless: true,
    // A pipe, not a debugging port: nothing listens, and Chromium shuts
    // down when the pipe closes, even if this script is killed.
    pipe: true,
    userDataDir: join(home, "profile"),
    env: { ...process.env, HOME: home },
    // Root on a closed network: no sandbox (it refuses root), no GPU, no
    // QUIC, no calls home; a proxy from the environment must not be
    // asked for localhost.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-proxy-server",
    ],
    timeout: 3 * waitMs,
    protocolTimeout: 3 * waitMs,
  });
}

// Runs in the page: mqtt.js's browser bundle defines the global `mqtt`.
async function exchange(client, url, waitMs) {
  const report = {
    id: client.id,
    version: client.version,
    connack: null,
    suback: {},
    puback: null,
    received: [],
    error: null,
  };
  const filters = new Map();
  const awaited = new Set(client.await);
  let arrived;
  const allArrived = new Promise((resolve) => (arrived = resolve));
  const within = (promise, what) =>
    Promise.race([
      promise,
      new Promise((_, reject) => setTimeout(() => reject(new Error(`no ${what} within ${waitMs} ms`)), waitMs)),
    ]);

  const mq = mqtt.connect(url, {
    clientId: client.id,
    protocolVersion: client.version,
    username: "JWT",
    password: client.token,
    reconnectPeriod: 0,
    connectTimeout: waitMs,
    keepalive: 30,
    clean: true,
  });
  mq.on("packetsend", (packet) => {
    if (packet.cmd === "subscribe") filters.set(packet.messageId, packet.subscriptions.map((s) => s.topic).join(","));
  });
  mq.on("packetreceive", (packet) => {
    if (packet.cmd === "connack") report.connack = packet.reasonCode ?? packet.returnCode ?? 0;
    if (packet.cmd === "suback") report.suback[filters.get(packet.messageId)] = packet.granted;
    if (packet.cmd === "puback") report.puback = packet.reasonCode ?? 0;
    if (packet.cmd === "publish") {
      report.received.push({
        topic: packet.topic,
        payload: new TextDecoder().decode(packet.payload),
        qos: packet.qos,
        retain: packet.retain,
      });
      awaited.delete(packet.topic);
      if (awaited.size === 0) arrived();
    }
  });
  mq.on("error", (err) => (report.error ??= String(err.message ?? err)));

  try {
    await within(
      new Promise((resolve, reject) => {
        mq.once("connect", resolve);
        mq.once("close", () => reject(new Error(`closed before CONNACK: ${report.error ?? "no error reported"}`)));
      }),
      "CONNACK",
    );
    // mqtt.js calls back with an error for a refused filter; the SUBACK's
    // codes were taken from the packet above either way.
    const subscribe = (filter) =>
      within(new Promise((resolve) => mq.subscribe(filter, { qos: 1 }, () => resolve())), `SUBACK for ${filter}`);
    await subscribe(client.subscribe);
    await subscribe(client.refused);
    await within(
      new Promise((resolve) => mq.publish(client.publish, client.payload, { qos: 1 }, () => resolve())),
      `PUBACK for ${client.publish}`,
    );
    // Absent messages are the test's to judge: stop waiting, report.
    if (awaited.size > 0) {
      await Promise.race([allArrived, new Promise((resolve) => setTimeout(resolve, waitMs))]);
    }
  } catch (err) {
    report.error = String(err.message ?? err);
  } finally {
    // end() of a client that never connected may not call back.
    await Promise.race([
      new Promise((resolve) => mq.end(false, {}, () => resolve())),
      new Promise((resolve) => setTimeout(resolve, 1000)),
    ]);
  }
  return report;
}

// The page comes from a loopback origin of its own (http://127.0.0.1:PORT/,
// a secure context like any localhost origin). Chromium's Local Network
// Access checks block a page from elsewhere, about:blank included
// (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS), from opening a
// connection to loopback without the user's permission; a page on the
// gateway's own network, as an HMI would be, is not asked.
async function servePage() {
  const script = readFileSync(bundle);
  const html = '<!doctype html><meta charset="utf-8"><title>jwtgate</title><script src="/mqtt.min.js"></script>';
  const server = createServer((req, res) => {
    if (req.url === "/mqtt.min.js") res.writeHead(200, { "content-type": "text/javascript" }).end(script);
    else if (req.url === "/") res.writeHead(200, { "content-type": "text/html" }).end(html);
    // No favicon: a 204, not a 404 in the page's console.
    else res.writeHead(req.url === "/favicon.ico" ? 204 : 404).end();
  });
  await new Promise((resolve, reject) => server.once("error", reject).listen(0, "127.0.0.1", resolve));
  return server;
}

async function page(browser, origin) {
  const tab = await browser.newPage();
  const lines = [];
  tab.on("console", (msg) => lines.push(msg.text()));
  await tab.goto(`${origin}/`);
  await tab.addScriptTag({ content: `window.exchange = ${exchange.toString()};` });
  if (!(await tab.evaluate(() => typeof mqtt?.connect === "function"))) {
    throw new Error(`${bundle} did not define mqtt.connect in the page`);
  }
  return { tab, lines };
}

try {
  server = await servePage();
  const origin = `http://127.0.0.1:${server.address().port}`;
  const home = profile(true);
  homes.push(home);
  const browser = await launch(home);
  browsers.push(browser);
  const { tab, lines: pageLines } = await page(browser, origin);
  const clients = await tab.evaluate(
    (clients, url, waitMs) => Promise.all(clients.map((client) => exchange(client, url, waitMs))),
    spec.clients,
    spec.url,
    waitMs,
  );
  const result = { browser: await browser.version(), clients, console: pageLines };

  if (spec.untrusted_control) {
    const bare = profile(false);
    homes.push(bare);
    const untrustingBrowser = await launch(bare);
    browsers.push(untrustingBrowser);
    const { tab: untrusting, lines } = await page(untrustingBrowser, origin);
    const [first] = spec.clients;
    const attempt = await untrusting.evaluate(
      (client, url, waitMs) => exchange(client, url, waitMs),
      { ...first, id: `${first.id}-untrusting` },
      spec.url,
      waitMs,
    );
    // The page is told only that the WebSocket failed; Chromium writes the
    // network error, the reason, to the page's console.
    const netError = lines.map((line) => /net::(ERR_[A-Z_]+)/.exec(line)?.[1]).find(Boolean) ?? null;
    result.untrusted = { connected: attempt.connack !== null, error: attempt.error, net_error: netError, console: lines };
  }
  process.stdout.write(JSON.stringify(result) + "\n");
} catch (err) {
  process.stderr.write(`browser.mjs: ${err.stack ?? err}\n`);
  process.exitCode = 1;
} finally {
  clearTimeout(overall);
  await cleanUp();
}
