// Drives the RiskSense dashboard in headless Chromium and checks what an analyst sees:
// live alerts with explanations appear, a SQL query shows rows, a lookup answers, a
// standing query created from the page streams its rows into the live table (and a
// windowed one draws its chart), and a query the stream cannot run shows why.
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
  const drawn = await page.$$eval("#throughput, #histogram", (canvases) => canvases.every((c) => c.width > 0 && c.height > 0));
  if (!drawn) failures.push("a chart canvas is empty");

  // Live queries: the shipped examples are listed with their counters.
  await page.waitForSelector("#queries tbody tr.query-row", { timeout: 10_000 });

  // A standing query created from the page streams its rows into the live table.
  const view = `big_spenders_${Date.now()}`;
  await page.fill("#query-ddl", `CREATE VIEW ${view} AS SELECT trans_num, category, amt FROM scored WHERE amt > 50`);
  await page.click("#create-query");
  await page.waitForSelector(`#queries tr.query-row[data-name="${view}"]`, { timeout: 10_000 });
  await page.waitForFunction(() => document.getElementById("live-status").textContent === "live", null, { timeout: 10_000 });
  await page.waitForSelector("#live-rows tbody tr.live-row", { timeout: 30_000 });
  const header = await page.$$eval("#live-rows thead th", (cells) => cells.map((c) => c.textContent));
  if (header.join(",") !== "trans_num,category,amt") failures.push(`live table columns: ${header}`);
  // Rows keep arriving (newest first), the table stays at 50 at most.
  const firstRow = await page.$eval("#live-rows tbody tr.live-row", (r) => r.textContent);
  await page.waitForFunction((first) => {
    const row = document.querySelector("#live-rows tbody tr.live-row");
    return row && row.textContent !== first;
  }, firstRow, { timeout: 30_000 });
  const liveRows = await page.$$eval("#live-rows tbody tr.live-row", (rows) =>
    rows.map((r) => Array.from(r.querySelectorAll("td")).map((td) => td.textContent)));
  if (liveRows.length < 1 || liveRows.length > 50) failures.push(`${liveRows.length} live rows`);
  if (!liveRows.every((cells) => Number(cells[2]) > 50)) failures.push(`a live row outside the query: ${JSON.stringify(liveRows[0])}`);
  // Its counters move in the list.
  await page.waitForFunction((name) => {
    const row = document.querySelector(`#queries tr.query-row[data-name="${name}"]`);
    return row && Number(row.children[3].textContent.replace(/[^\d.]/g, "")) > 0;
  }, view, { timeout: 15_000 });

  // A windowed query shows its windows and draws a chart over window_start.
  const windowed = `per_minute_${Date.now()}`;
  await page.fill("#query-ddl", `CREATE VIEW ${windowed} AS SELECT tumble(trans_date_trans_time, INTERVAL '1' MINUTE) AS window_start, category, count(*) AS n, sum(amt) AS spend FROM scored GROUP BY 1, 2`);
  await page.click("#create-query");
  await page.waitForFunction((name) => document.getElementById("live-name").textContent === name, windowed, { timeout: 10_000 });
  await page.waitForSelector("#live-rows tbody tr.live-row", { timeout: 60_000 });
  await page.waitForFunction(() => {
    const chart = Chart.getChart("live-chart");
    return !document.getElementById("live-chart-box").hidden && chart && chart.data.datasets.length > 0
      && chart.data.labels.length > 0 && document.getElementById("live-chart").width > 0;
  }, null, { timeout: 30_000 });
  const windowRows = await page.$$eval("#live-rows tbody tr.live-row", (rows) => rows.length);

  // A query a stream cannot run is refused, with the reason shown inline.
  await page.fill("#query-ddl", "CREATE VIEW per_card AS SELECT cc_num, count(*) AS n FROM scored GROUP BY cc_num");
  await page.click("#create-query");
  await page.waitForFunction(() => document.getElementById("query-error").textContent.includes("tumble"), null, { timeout: 10_000 });

  // Deleting the query ends its live table.
  await page.click(`#queries button.delete-query[data-name="${windowed}"]`);
  await page.waitForFunction((name) => !document.querySelector(`#queries tr.query-row[data-name="${name}"]`)
    && document.getElementById("live").hidden, windowed, { timeout: 10_000 });
  console.log(`dashboard: ${alerts.length} alerts, ${sqlRows} SQL rows, lookup of ${transaction} ok, ` +
    `${liveRows.length} live rows of ${view}, ${windowRows} windows of ${windowed}`);
} catch (error) {
  failures.push(String(error));
} finally {
  await browser.close();
}
if (failures.length) {
  console.error("dashboard test failed:\n  " + failures.join("\n  "));
  process.exit(1);
}
