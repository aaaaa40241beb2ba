// `make run` as a newcomer uses it: start it, open the URL it prints in headless Chromium, see
// the tiles and cards filled with the demo data source's data and follow its changes without
// a reload, then press Ctrl-C (SIGINT to make's process group, as a terminal does) and check
// that every process it started is gone and its ports are closed. A local control plane that
// was up before stays up; one `make run` started must be gone too.
//
//   node e2e/browser/demo.test.mjs              (REPO=<checkout> to run another clone's make run)
//
// Run by e2e/test.sh after the suite, against the cluster already up (KUBECONFIG set).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { check, launch } from './lib.mjs';

const repo = resolve(process.env.REPO || join(dirname(fileURLToPath(import.meta.url)), '..', '..'));
const artifacts = resolve(process.env.ARTIFACTS || 'artifacts/browser');
// Long enough for `make run`'s build when the release build is already there (test.sh builds
// it first); the clock for the rest starts at the URL.
const URL_TIMEOUT = Number(process.env.DEMO_URL_TIMEOUT_SECONDS || 300) * 1000;
const DATA_TIMEOUT = 60_000; // the issue's bound: live data within a minute
const CHANGE_TIMEOUT = 75_000; // two refresh intervals (30 s) and a demo step (15 s)

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;

// Processes of a session (make is spawned as a session leader) and whether one still runs.
function sessionMembers(sid) {
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number).filter((pid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[3]) === sid;
    } catch { return false; }
  });
}
function running(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch { return false; }
}
const commandOf = (pid) => { try { return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim(); } catch { return '?'; } };
const portOpen = (port) => new Promise((done) => {
  const socket = connect({ host: '127.0.0.1', port });
  socket.once('connect', () => { socket.destroy(); done(true); });
  socket.once('error', () => done(false));
});
const clusterPids = () => {
  const dir = join(repo, 'e2e', '.run', 'pids');
  return existsSync(dir) ? readdirSync(dir).map((f) => Number(readFileSync(join(dir, f), 'utf8').trim())).filter(Boolean) : [];
};

// Whether make run will start the local control plane (and so must stop it).
const clusterUp = spawnSync('bash', ['e2e/cluster.sh', 'status'], { cwd: repo, stdio: 'ignore' }).status === 0;
const startsCluster = !process.env.KUBECONFIG && !clusterUp;
console.log(`# make run in ${repo}; ${process.env.KUBECONFIG ? `KUBECONFIG=${process.env.KUBECONFIG}` : clusterUp ? 'local cluster already up' : 'no cluster up: make run starts one'}`);

mkdirSync(artifacts, { recursive: true });
const t0 = Date.now();
const run = spawn('make', ['run'], { cwd: repo, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
let output = '';
run.stdout.on('data', (d) => { output += d; });
run.stderr.on('data', (d) => { output += d; });
let exited = null;
run.on('exit', (code, signal) => { exited = { code, signal }; });
const ctrlC = () => { try { process.kill(-run.pid, 'SIGINT'); } catch { /* already gone */ } };

let browser;
try {
  // 1. The URL.
  let url;
  while (!(url = output.match(/Portal: (http:\/\/127\.0\.0\.1:\d+\/)/)?.[1])) {
    if (exited) throw new Error(`make run exited (${JSON.stringify(exited)}) before printing a URL:\n${output}`);
    if (Date.now() - t0 > URL_TIMEOUT) throw new Error(`no URL after ${seconds(URL_TIMEOUT)}:\n${output}`);
    await sleep(200);
  }
  const tUrl = Date.now();
  check(true, `make run printed ${url} after ${seconds(tUrl - t0)}`);
  check(/--allow-public-portals/.test(output) && /Production installs keep public portals off/.test(output),
    'it says plainly that the demo allows public portals and production should not');

  // 2. The page fills with the demo data, without a token (the demo portal is public).
  browser = await launch({ colorScheme: 'light' });
  const { page } = browser;
  const response = await page.goto(url, { waitUntil: 'load' });
  check(response.status() === 200, `the page answers 200 without sign-in (${response.status()})`);
  await page.waitForSelector('#live[data-state="live"]', { timeout: 10_000 });
  await page.evaluate(() => { window.__sameDocument = 'yes'; });
  const tiles = () => page.$$eval('[data-tile] .count', (els) =>
    Object.fromEntries(els.map((e) => [e.parentElement.dataset.tile, Number(e.textContent)])));
  const cards = () => page.$$eval('[data-binding]', (els) => els.map((c) => ({
    name: c.dataset.binding,
    state: c.querySelector('[data-state]')?.textContent,
    items: [...c.querySelectorAll('.item .title')].map((t) => t.textContent),
  })));
  await page.waitForFunction(() => {
    const count = (k) => Number(document.querySelector(`[data-tile="${k}"] .count`)?.textContent || 0);
    const filled = [...document.querySelectorAll('[data-binding]')].filter((c) => c.querySelector('.item'));
    return count('open-pull-requests') > 0 && count('open-tickets') > 0 && filled.length === 3;
  }, null, { timeout: DATA_TIMEOUT, polling: 250 });
  const tData = Date.now();
  const first = await tiles();
  const firstCards = await cards();
  check(true, `tiles filled ${seconds(tData - tUrl)} after the URL: ${JSON.stringify(first)}`);
  check(JSON.stringify(firstCards.map((c) => c.name)) === '["github","gitlab","jira"]', `one card per tool: ${firstCards.map((c) => c.name)}`);
  for (const card of firstCards) {
    check(card.state === 'Ready' && card.items.length > 0, `${card.name}: ${card.state}, ${card.items.length} items (e.g. "${card.items[0]}")`);
  }
  check(await page.textContent('[data-title]') === 'Demo team (data from the hyperpage-demo server)', 'the page names the demo as such');
  await page.screenshot({ path: join(artifacts, 'demo-first.png'), fullPage: true });

  // 3. The data moves (new PRs, pipelines red and green, tickets moving), and the page follows.
  const snapshot = async () => JSON.stringify([await tiles(), (await cards()).map((c) => c.items)]);
  const before = await snapshot();
  let sawFailing = first['failing-pipelines'] > 0;
  let changedAt = null;
  while (Date.now() - tData < CHANGE_TIMEOUT && !(changedAt && sawFailing)) {
    await sleep(500);
    sawFailing ||= (await tiles())['failing-pipelines'] > 0;
    if (!changedAt && (await snapshot()) !== before) changedAt = Date.now();
  }
  check(changedAt !== null, `the page followed a change of the demo data ${changedAt ? seconds(changedAt - tData) : '(none)'} after the first data`);
  check(sawFailing, 'a failing pipeline showed up');
  check(await page.evaluate(() => window.__sameDocument === 'yes'), 'without a reload');
  check(browser.problems.length === 0, `no console errors${browser.problems.length ? `: ${browser.problems.join('; ')}` : ''}`);
  await page.screenshot({ path: join(artifacts, 'demo-later.png'), fullPage: true });
  console.log(`# final tiles ${JSON.stringify(await tiles())}`);
  await browser.close();
  browser = null;

  // 4. Ctrl-C stops everything make run started.
  const members = sessionMembers(run.pid);
  const cluster = clusterPids();
  const endpoints = readFileSync(join(repo, 'demo', '.run', 'endpoints.env'), 'utf8');
  const ports = [Number(new URL(url).port), ...[...endpoints.matchAll(/:(\d+)\s*$/gm)].map((m) => Number(m[1])),
    Number(output.match(/curl -s 127\.0\.0\.1:(\d+)\/metrics/)[1])];
  for (const port of ports) check(await portOpen(port), `port ${port} is open while it runs`);
  console.log(`# processes of make run: ${members.map((p) => `${p} (${commandOf(p).slice(0, 60)})`).join(', ')}`);
  check(members.length >= 5, `make, its shell, the demo server, the operator and the portal run (${members.length})`);
  const tStop = Date.now();
  ctrlC();
  while (!exited && Date.now() - tStop < 40_000) await sleep(100);
  check(exited !== null, `make run exited ${seconds(Date.now() - tStop)} after Ctrl-C (${JSON.stringify(exited)})`);
  const stopped = Date.now() + 3_000; // reaping by init after make is gone
  while (members.some(running) && Date.now() < stopped) await sleep(100);
  const left = members.filter(running);
  check(left.length === 0, `no process of make run is left${left.length ? `: ${left.map(commandOf).join('; ')}` : ''}`);
  for (const port of ports) check(!(await portOpen(port)), `port ${port} is closed`);
  if (startsCluster) {
    check(cluster.length >= 6, `make run had started the local control plane (${cluster.length} processes)`);
    const still = cluster.filter(running);
    check(still.length === 0, `the control plane it started is stopped${still.length ? `: ${still.map(commandOf).join('; ')}` : ''}`);
    check(!existsSync(join(repo, 'e2e', '.run')), 'e2e/.run is removed');
  } else {
    const answers = process.env.KUBECONFIG
      ? spawnSync('kubectl', ['get', '--raw', '/readyz'], { encoding: 'utf8' }).stdout === 'ok'
      : spawnSync('bash', ['e2e/cluster.sh', 'status'], { cwd: repo, stdio: 'ignore' }).status === 0;
    check(answers, 'the cluster that was already up is still up');
  }
  console.log(`# figures: URL ${seconds(tUrl - t0)}, data ${seconds(tData - tUrl)} after the URL, change ${seconds(changedAt - tData)} later, stop ${seconds(Date.now() - tStop)}`);
} catch (error) {
  console.error(`--- make run output ---\n${output}\n---`);
  throw error;
} finally {
  if (browser) await browser.close();
  if (!exited) {
    ctrlC();
    for (let i = 0; i < 300 && !exited; i++) await sleep(100);
  }
}
