// The web client in a real browser (make test-e2e; scripts/test-e2e.sh installs what it needs and
// starts PostgreSQL). Two server processes share the database: the pages talk to the first, and the
// second is how a message is committed while the first is down, so reconnecting must catch up from
// /events. Two browser contexts, one desktop and one phone-sized, are two users. Screenshots go to
// $SHOTS (.data/e2e/shots/ unless set). Every wait has a deadline; any failure exits non-zero with the step that failed.
//
// Environment: BIN (the release binary), DATABASE_URL, NODE_PATH (where playwright-core is).
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const BIN = process.env.BIN;
const DATABASE_URL = process.env.DATABASE_URL;
const SHOTS = process.env.SHOTS || ".data/e2e/shots";
/** Every server this script started, killed when it exits however it exits. */
const children = new Set();
process.on("exit", () => children.forEach((child) => child.kill("SIGKILL")));
const WAIT = 15000;
const PASSWORD = "correct horse battery";

function log(step) {
  console.log(`e2e: ${step}`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** One server process on fixed ports, so it can be stopped and started again where the pages expect it. */
class Server {
  constructor(name, httpPort, wsPort, secretKey) {
    Object.assign(this, { name, httpPort, wsPort, secretKey, child: null });
    this.url = `http://127.0.0.1:${httpPort}`;
  }

  async start() {
    const env = {
      ...process.env,
      DATABASE_URL,
      HTTP_ADDR: `127.0.0.1:${this.httpPort}`,
      WS_ADDR: `127.0.0.1:${this.wsPort}`,
      SECRET_KEY: this.secretKey,
      PASSWORD_ITERATIONS: "1000",
      WORKERS: "4",
      LOG: "warn",
    };
    this.child = spawn(BIN, ["serve"], { env, stdio: ["ignore", "inherit", "inherit"] });
    children.add(this.child);
    this.child.once("error", (error) => console.error(`e2e: ${this.name}: ${error}`));
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.exited = exited;
    const deadline = Date.now() + WAIT;
    while (Date.now() < deadline) {
      if (this.child.exitCode !== null) throw new Error(`${this.name} exited with ${this.child.exitCode}`);
      try {
        if ((await fetch(`${this.url}/healthz`)).ok) return;
      } catch (_) { /* not listening yet */ }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(`${this.name} did not answer /healthz within ${WAIT} ms`);
  }

  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    this.child.kill("SIGTERM");
    const killed = setTimeout(() => this.child.kill("SIGKILL"), 10_000);
    await this.exited;
    clearTimeout(killed);
  }
}

async function signUp(page, base, username) {
  await page.goto(base);
  await page.click("#auth-switch");
  await page.fill("#signup-name", username);
  await page.fill("#signup-email", `${username}@example.com`);
  await page.fill("#signup-password", PASSWORD);
  await page.click("#signup-form button[type=submit]");
  await page.waitForSelector("#app:not(.hidden)", { timeout: WAIT });
  await page.waitForFunction(() => document.getElementById("status").textContent === "online", null, { timeout: WAIT });
}

/** A message by its own text (a reply's quote holds the text it quotes). */
const message = (page, text) => page.locator("#messages .msg").filter({ has: page.locator(".content", { hasText: text }) });

async function main() {
  const secretKey = randomBytes(32).toString("hex");
  const [h1, w1, h2, w2] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const pages = new Server("server 1", h1, w1, secretKey);
  const other = new Server("server 2", h2, w2, secretKey);
  await pages.start();
  await other.start();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu"],
  });
  const failures = [];
  try {
    const suffix = randomBytes(3).toString("hex");
    const [alice, bob] = [`alice_${suffix}`, `bob_${suffix}`];
    const a = await (await browser.newContext({ viewport: { width: 1100, height: 720 } })).newPage();
    const b = await (await browser.newContext({ viewport: { width: 390, height: 760 }, isMobile: true, hasTouch: true })).newPage();
    for (const page of [a, b]) page.on("pageerror", (error) => failures.push(`page error: ${error.message}`));

    log("two users sign up");
    await signUp(a, pages.url, alice);
    await signUp(b, pages.url, bob);

    log("alice finds bob by username and starts a direct chat");
    await a.click("#new-chat");
    await a.fill("#user-query", bob.slice(0, 6));
    await a.click(`#user-results li:has-text("${bob}")`, { timeout: WAIT });
    await a.click("#new-chat-create");
    await a.waitForSelector("#chat-view:not(.hidden)", { timeout: WAIT });

    log("alice sends with Enter; bob sees it live with an unread badge");
    await a.fill("#input", "hello bob, lunch at noon?");
    await a.press("#input", "Enter");
    await message(a, "lunch at noon").waitFor({ timeout: WAIT });
    const bobsItem = b.locator(".chat-item", { hasText: alice });
    await bobsItem.locator(".badge", { hasText: "1" }).waitFor({ timeout: WAIT });
    await bobsItem.locator(".preview", { hasText: "lunch at noon" }).waitFor({ timeout: WAIT });
    await bobsItem.locator(".dot.online").waitFor({ timeout: WAIT });
    await b.screenshot({ path: `${SHOTS}/webclient-phone-list.png` });

    log("bob opens the chat: the badge goes; his typing shows to alice");
    await bobsItem.click();
    await message(b, "lunch at noon").waitFor({ timeout: WAIT });
    await b.click("#back");
    await bobsItem.locator(".badge").waitFor({ state: "detached", timeout: WAIT });
    await bobsItem.click();
    await b.type("#input", "sure");
    await a.locator("#typing", { hasText: `${bob} is typing` }).waitFor({ timeout: WAIT });

    log("bob replies; the reply shows its quote on both sides");
    await b.fill("#input", "");
    await message(b, "lunch at noon").click();
    await message(b, "lunch at noon").locator("button.reply").click();
    await b.fill("#input", "yes, see you there");
    await b.press("#input", "Enter");
    for (const page of [a, b]) {
      await message(page, "see you there").locator(".quote", { hasText: "lunch at noon" }).waitFor({ timeout: WAIT });
    }

    log("alice reacts; the reaction shows on both sides");
    await message(a, "see you there").hover();
    await message(a, "see you there").locator("button.react").click();
    await message(a, "see you there").locator(".picker button", { hasText: "👍" }).click();
    for (const page of [a, b]) {
      await message(page, "see you there").locator(".reaction", { hasText: "👍 1" }).waitFor({ timeout: WAIT });
    }
    await a.screenshot({ path: `${SHOTS}/webclient.png` });
    await b.screenshot({ path: `${SHOTS}/webclient-phone-chat.png` });

    log("search finds the message and opens it");
    await a.fill("#search", "lunc");
    await a.press("#search", "Enter");
    await a.locator("#search-results .chat-item", { hasText: "lunch at noon" }).click({ timeout: WAIT });
    await message(a, "lunch at noon").waitFor({ timeout: WAIT });

    log("a reload keeps the session and the history");
    await b.reload();
    await b.locator(".chat-item", { hasText: alice }).click({ timeout: WAIT });
    await message(b, "lunch at noon").waitFor({ timeout: WAIT });
    await message(b, "see you there").locator(".reaction", { hasText: "👍 1" }).waitFor({ timeout: WAIT });

    log("server 1 stops: the sockets drop; a message committed meanwhile through server 2 is caught up");
    const token = await b.evaluate(() => sessionStorage.getItem("messaging.token"));
    const chatId = await b.evaluate(() => Number(document.querySelector(".chat-item.active").dataset.chatId));
    await pages.stop();
    await a.locator("#status.down").waitFor({ timeout: WAIT });
    const sent = await fetch(`${other.url}/api/chats/${chatId}/messages`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ content: "sent while you were away" }),
    });
    if (sent.status !== 201) throw new Error(`send through server 2: HTTP ${sent.status}`);
    await pages.start();
    for (const page of [a, b]) {
      await page.waitForFunction(() => document.getElementById("status").textContent === "online", null, { timeout: WAIT * 2 });
      await message(page, "while you were away").waitFor({ timeout: WAIT });
    }
    log("every step passed");
  } catch (error) {
    failures.push(error.stack || String(error));
  } finally {
    await browser.close();
    await pages.stop();
    await other.stop();
  }
  if (failures.length > 0) {
    console.error(`e2e: FAILED\n${failures.join("\n")}`);
    process.exit(1);
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
