// Drives Debian's headless Chromium against a running `hyperpage portal`.
// Started by tests/e2e/portal.rs (which creates the objects and the portal); this script
// patches statuses with kubectl and checks what a person would see.
//
//   PORTAL_URL=http://127.0.0.1:PORT NAMESPACE=ns WORKSPACE=payments ARTIFACTS=artifacts/browser \
//     node e2e/browser/portal.test.mjs
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { TIMEOUT, check, kubectl, launch, need } from './lib.mjs';

const url = need('PORTAL_URL');
const ns = need('NAMESPACE');
const ws = need('WORKSPACE');
const artifacts = process.env.ARTIFACTS || 'artifacts/browser';

function patchStatus(kind, name, status) {
  kubectl('patch', kind, name, '-n', ns, '--subresource=status', '--type=merge', '-p', JSON.stringify({ status }));
}

const now = () => new Date().toISOString().replace(/\.\d+Z$/, 'Z');
const cond = (type, status, reason, message = '') => ({ type, status, reason, message, lastTransitionTime: now() });

mkdirSync(artifacts, { recursive: true });
const { page, problems, close } = await launch({ colorScheme: 'light' });
try {
  const response = await page.goto(url, { waitUntil: 'load' });
  const csp = response.headers()['content-security-policy'] || '';
  check(csp.includes("script-src 'self'") && !csp.includes('unsafe-inline'), `strict CSP: ${csp}`);
  await page.waitForSelector('#live[data-state="live"]', { timeout: TIMEOUT });
  check(true, 'the live connection (server-sent events) is up');

  // Cards and counts match the statuses in the API server.
  const bindings = JSON.parse(kubectl('get', 'toolbindings', '-n', ns, '-o', 'json')).items
    .filter((b) => b.spec.workspaceRef.name === ws);
  const names = await page.$$eval('[data-binding]', (cards) => cards.map((c) => c.dataset.binding));
  check(JSON.stringify(names) === JSON.stringify(bindings.map((b) => b.metadata.name).sort()), `one card per binding: ${names}`);
  const summary = JSON.parse(kubectl('get', 'workspace', ws, '-n', ns, '-o', 'json')).status.summary;
  const vulnerable = bindings.reduce((n, b) => n + (b.status?.summary?.vulnerableArtifacts || 0), 0);
  const tile = (key) => page.$eval(`[data-tile="${key}"] .count`, (e) => Number(e.textContent));
  check(await tile('open-pull-requests') === summary.openPullRequests, `open PRs tile = ${summary.openPullRequests}`);
  check(await tile('failing-pipelines') === summary.failingPipelines, `failing pipelines tile = ${summary.failingPipelines}`);
  check(await tile('open-tickets') === summary.openIssues, `open tickets tile = ${summary.openIssues}`);
  check(await tile('vulnerable-artifacts') === vulnerable, `vulnerable artifacts tile = ${vulnerable}`);
  const remaining = bindings.find((b) => b.metadata.name === 'github').status.rateLimit.remaining;
  const shown = await page.textContent('[data-binding="github"] [data-fact="rate-limit"]');
  check(shown.startsWith(`${remaining} /`), `github rate limit remaining shown: ${shown.trim()}`);

  // An item title with markup renders as text; nothing runs.
  const evil = bindings.flatMap((b) => Object.values(b.status?.items || {}).flat()).find((i) => i.title.includes('<script>'));
  check(evil, 'the statuses hold an item title with <script>');
  const texts = await page.$$eval('.item .title', (els) => els.map((e) => e.textContent));
  check(texts.includes(evil.title), 'the <script> title is shown verbatim as text');
  check(await page.evaluate(() => window.__xss === undefined), 'the injected script did not run');
  check(await page.$$eval('main script, main img, main iframe', (els) => els.length) === 0, 'no element was injected');

  // Change statuses: the page follows without a reload.
  await page.evaluate(() => { window.__sameDocument = 'yes'; });
  const started = Date.now();
  patchStatus('workspace', ws, { summary: { ...summary, openPullRequests: summary.openPullRequests + 4, lastSyncTime: now() } });
  patchStatus('toolbinding', 'github', {
    lastSyncTime: now(), lastSuccessfulSyncTime: now(),
    items: { codeReviews: [{ id: '#4242', title: 'Live: retry idempotent payment captures', url: 'https://github.com/acme/payments-api/pull/4242', state: 'open', author: 'dana', updatedAt: now() }] },
  });
  await page.waitForFunction((n) => document.querySelector('[data-tile="open-pull-requests"] .count')?.textContent === String(n),
    summary.openPullRequests + 4, { timeout: TIMEOUT });
  await page.waitForSelector('text=Live: retry idempotent payment captures', { timeout: TIMEOUT });
  const latency = Date.now() - started;
  check(await page.evaluate(() => window.__sameDocument === 'yes'), `status changes reached the page without a reload (${latency} ms)`);

  patchStatus('toolbinding', 'gitlab', {
    conditions: [cond('Ready', 'False', 'SyncFailing', 'gitlab.example.com answers 502'), cond('Synced', 'False', 'UpstreamError', 'HTTP 502 from gitlab.example.com'),
      cond('Degraded', 'True', 'CircuitOpen', '5 failures in a row; retrying in 2m'), cond('CredentialsValid', 'True', 'SecretFound')],
  });
  await page.waitForSelector('[data-binding="gitlab"].degraded [data-mark="degraded"]', { timeout: TIMEOUT });
  const badge = await page.textContent('[data-binding="gitlab"] [data-state]');
  check(badge === 'Degraded', `the degraded binding shows as degraded (badge "${badge}")`);
  check(await page.$('[data-binding="gitlab"] [data-mark="stale"]') !== null, 'its kept items are marked stale (Synced=False)');
  check(await page.evaluate(() => window.__sameDocument === 'yes'), 'still the same document');

  await page.screenshot({ path: join(artifacts, 'portal-light.png'), fullPage: true });
  await page.emulateMedia({ colorScheme: 'dark' });
  const dark = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  check(dark !== 'rgb(246, 247, 249)', `dark mode follows the system preference (${dark})`);
  await page.screenshot({ path: join(artifacts, 'portal-dark.png'), fullPage: true });
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(overflow <= 0, `readable on a phone: no sideways scrolling at 390 px (overflow ${overflow} px)`);
  await page.screenshot({ path: join(artifacts, 'portal-phone.png'), fullPage: true });

  check(problems.length === 0, `no console errors or CSP violations${problems.length ? `: ${problems.join('; ')}` : ''}`);
  console.log(`screenshots in ${artifacts}/`);
} finally {
  await close();
}
