// Opens the /admin status page in headless Chromium (Debian's, through playwright-core),
// answering the Basic-auth prompt with the API key, waits for several live updates, reads
// the figures the page shows and saves a screenshot.
//   node admin_page.mjs <url> <api key> <screenshot.png>
// Prints one JSON line: {connections, transports, users, updates, errors}.
import { chromium } from "playwright-core";

const [url, key, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const context = await browser.newContext({
    httpCredentials: { username: "admin", password: key },
    viewport: { width: 1280, height: 900 },
  });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url, { timeout: 15000 });
  // three refreshes of the live figures (one per second)
  await page.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 3,
                             null, { timeout: 15000 });
  const figures = await page.evaluate(() => ({
    connections: document.getElementById("connections").textContent,
    transports: document.getElementById("transports").textContent,
    users: [...document.querySelectorAll("#users td")].map((td) => td.textContent),
    meta: document.getElementById("meta").textContent,
    updates: Number(document.body.dataset.updates),
  }));
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ ...figures, errors }));
} finally {
  await browser.close();
}
