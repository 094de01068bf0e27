// End-to-end check of Fulcrum's admin dashboard in headless Debian Chromium, run by
// tests/dashboard.rs:
//
//   node tests/dashboard/check.mjs <admin_url> <proxy_url> <screenshot_path> [backend_ids]
//
// Opens the dashboard, waits until every backend id (comma-separated, default web1,web2,web3)
// has a row, reads #total-requests, sends 50 requests through the proxy, waits until
// #total-requests shows more, and saves a full-page screenshot. Any page error, console error or
// CSP violation fails the check. Exit 0 = pass; anything else prints why.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const OVERALL_MS = 90_000;
const STEP_MS = 15_000;
const REQUESTS = 50;

const [adminUrl, proxyUrl, shotPath, idsArg] = process.argv.slice(2);
if (!adminUrl || !proxyUrl || !shotPath) {
  console.error('usage: node check.mjs <admin_url> <proxy_url> <screenshot_path> [backend_ids]');
  process.exit(2);
}
const ids = (idsArg || 'web1,web2,web3').split(',').filter(Boolean);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const profile = mkdtempSync(join(tmpdir(), 'fulcrum-dashboard-'));
let context = null;

function log(msg) {
  console.log(`check.mjs: ${msg}`);
}

async function cleanup() {
  if (context) await context.close().catch(() => {});
  context = null;
  rmSync(profile, { recursive: true, force: true });
}

async function fail(msg) {
  console.error(`check.mjs: FAIL: ${msg}`);
  await cleanup();
  process.exit(1);
}

// Whatever happens, end in bounded time.
const watchdog = setTimeout(() => {
  console.error(`check.mjs: FAIL: gave up after ${OVERALL_MS / 1000} s`);
  try { rmSync(profile, { recursive: true, force: true }); } catch (_) { /* best effort */ }
  process.exit(3);
}, OVERALL_MS);

/** Sends `n` GETs to the proxy, one every `gapMs` (not waiting for answers); returns the
 * statuses' counts ("error" for transport errors). */
async function sendRequests(n, gapMs) {
  const statuses = {};
  const one = async () => {
    let key = 'error';
    try {
      const res = await fetch(proxyUrl + '/', { signal: AbortSignal.timeout(5000) });
      await res.arrayBuffer();
      key = String(res.status);
    } catch (_) { /* counted as "error" */ }
    statuses[key] = (statuses[key] || 0) + 1;
  };
  const pending = [];
  for (let i = 0; i < n; i++) {
    pending.push(one());
    await new Promise((r) => setTimeout(r, gapMs));
  }
  await Promise.all(pending);
  return statuses;
}

const totalOf = (page) =>
  page.$eval('#total-requests', (el) => (el.dataset.value === '' ? null : Number(el.dataset.value)));

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    timeout: STEP_MS,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1440, height: 720 },
    deviceScaleFactor: 1,
    colorScheme: 'dark',
    reducedMotion: 'reduce',
  });
  context.setDefaultTimeout(STEP_MS);
  const page = context.pages()[0] || (await context.newPage());

  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  });

  log(`opening ${adminUrl}/`);
  const resp = await page.goto(adminUrl + '/', { waitUntil: 'load' });
  if (!resp || resp.status() !== 200) await fail(`GET / answered ${resp && resp.status()}`);
  const csp = resp.headers()['content-security-policy'] || '';
  if (!csp.includes("connect-src 'self'")) await fail(`unexpected Content-Security-Policy: ${csp}`);

  log(`waiting for backends ${ids.join(', ')}`);
  await page
    .waitForFunction(
      (want) => want.every((id) => document.querySelector(`tr[data-backend="${CSS.escape(id)}"]`)),
      ids,
      { timeout: STEP_MS },
    )
    .catch(async () => {
      const shown = await page.$$eval('[data-backend]', (els) => els.map((e) => e.dataset.backend));
      const state = await page.$eval('#conn-status', (el) => el.textContent.trim());
      await fail(`backends never all appeared (shown: [${shown.join(', ')}], status: ${state})`);
    });
  const live = await page.$eval('#conn-status', (el) => el.dataset.state);
  if (live !== 'live') await fail(`connection indicator is "${live}", not "live"`);

  const before = await totalOf(page);
  if (before === null) await fail('#total-requests has no value');
  log(`#total-requests = ${before}; sending ${REQUESTS} requests to ${proxyUrl}`);

  // Spread over ~8 s, so the charts show traffic rather than one spike.
  const statuses = await sendRequests(REQUESTS, 160);
  if (statuses['200'] !== REQUESTS) await fail(`proxy answers by status: ${JSON.stringify(statuses)}`);

  await page
    .waitForFunction(
      (b) => Number(document.getElementById('total-requests').dataset.value) > b,
      before,
      { timeout: STEP_MS },
    )
    .catch(async () => fail(`#total-requests stayed at ${await totalOf(page)} after ${REQUESTS} requests`));
  // Let the counter catch up with all of them and the rate history collect a few more samples.
  await page
    .waitForFunction(
      (want) => Number(document.getElementById('total-requests').dataset.value) >= want,
      before + REQUESTS,
      { timeout: 5000 },
    )
    .catch(() => {});
  await page.waitForTimeout(2500);
  const after = await totalOf(page);
  log(`#total-requests = ${after}`);

  const rows = await page.$$eval('tr[data-backend]', (els) =>
    els.map((e) => ({
      id: e.dataset.backend,
      health: e.dataset.health,
      text: e.querySelector('[data-field="health"]').textContent.trim(),
    })),
  );
  for (const r of rows) {
    if (!r.text) await fail(`backend ${r.id} shows no health label`);
  }

  await page.screenshot({ path: shotPath, fullPage: true });
  log(`screenshot saved to ${shotPath}`);

  if (problems.length) await fail(`the page reported:\n  ${problems.join('\n  ')}`);
  log(`PASS (${rows.map((r) => `${r.id}: ${r.health}`).join(', ')})`);
  await cleanup();
  clearTimeout(watchdog);
  process.exit(0);
} catch (e) {
  await fail(e && e.stack ? e.stack : String(e));
}
