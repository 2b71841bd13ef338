// Drives the RiskSense dashboard in headless Chromium and checks what an analyst sees:
// live alerts with explanations appear, a SQL query shows rows, a lookup answers.
// Usage: node dashboard.mjs http://127.0.0.1:8080   (CHROMIUM=/path overrides the browser)
import { chromium } from "playwright-core";

const url = process.argv[2];
if (!url) {
  console.error("usage: node dashboard.mjs <dashboard url>");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu"] });
const failures = [];
const page = await browser.newPage();
page.on("pageerror", (error) => failures.push(`page error: ${error.message}`));
try {
  await page.goto(url, { waitUntil: "load" });

  // Alerts arrive from the live stream, each with its explanation.
  await page.waitForSelector("#alerts tbody tr.alert-row", { timeout: 60_000 });
  const alerts = await page.$$eval("#alerts tbody tr.alert-row", (rows) =>
    rows.map((r) => Array.from(r.querySelectorAll("td")).map((td) => td.textContent)));
  if (alerts.length === 0) failures.push("no alerts shown");
  if (!alerts.every((cells) => cells[6] && cells[6].includes("%"))) failures.push("an alert without its explanation");

  // Counters move.
  await page.waitForFunction(() => Number(document.getElementById("scored").textContent.replace(/\D/g, "")) > 0, null, { timeout: 30_000 });

  // A SQL query over the live window shows rows.
  await page.fill("#sql", "SELECT category, count(*) AS n FROM scored GROUP BY category ORDER BY n DESC");
  await page.click("#run-sql");
  await page.waitForSelector("#sql-results tbody tr.sql-row", { timeout: 30_000 });
  const sqlRows = await page.$$eval("#sql-results tbody tr.sql-row", (rows) => rows.length);
  if (sqlRows < 1) failures.push("the SQL query showed no rows");

  // Looking up the first alert's transaction shows it.
  const transaction = alerts[0][1];
  await page.fill("#lookup-id", transaction);
  await page.click("#lookup-tx");
  await page.waitForFunction((id) => document.getElementById("lookup-result").textContent.includes(id), transaction, { timeout: 10_000 });

  // Charts were drawn.
  const drawn = await page.$$eval("canvas", (canvases) => canvases.every((c) => c.width > 0 && c.height > 0));
  if (!drawn) failures.push("a chart canvas is empty");
  console.log(`dashboard: ${alerts.length} alerts, ${sqlRows} SQL rows, lookup of ${transaction} ok`);
} catch (error) {
  failures.push(String(error));
} finally {
  await browser.close();
}
if (failures.length) {
  console.error("dashboard test failed:\n  " + failures.join("\n  "));
  process.exit(1);
}
