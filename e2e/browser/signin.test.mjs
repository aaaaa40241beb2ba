// Signs in to a portal through the real OpenID provider's own login form, in Debian's
// headless Chromium. Started by tests/e2e/portal_auth.rs, which runs the provider (through
// e2e/cluster.sh), the portal in `kubernetes` mode with OIDC, and binds the group
// `oidc:team-payments` to hyperpage-workspace-viewer.
//
//   PORTAL_URL=http://127.0.0.1:PORT ISSUER=https://127.0.0.1:PORT NAMESPACE=ns WORKSPACE=payments \
//   ALLOWED=pat:password DENIED=oscar:password node e2e/browser/signin.test.mjs
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { TIMEOUT, check, kubectl, launch, need } from './lib.mjs';

const url = need('PORTAL_URL');
const issuer = new URL(need('ISSUER'));
const ns = need('NAMESPACE');
const ws = need('WORKSPACE');
const [allowedUser, allowedPassword] = need('ALLOWED').split(':');
const [deniedUser, deniedPassword] = need('DENIED').split(':');
const artifacts = process.env.ARTIFACTS || 'artifacts/browser';
const SESSION = 'hyperpage_session';

mkdirSync(artifacts, { recursive: true });
// The provider's certificate is signed by the test cluster's own CA.
const { context, page, problems, close } = await launch({ ignoreHTTPSErrors: true });
const onProvider = (page) => new URL(page.url()).host === issuer.host;
const session = async () => (await context.cookies(url)).find((c) => c.name === SESSION);

async function signIn(page, user, password) {
  await page.goto(url, { waitUntil: 'load' });
  check(onProvider(page) && new URL(page.url()).pathname.startsWith('/login'), `an anonymous visit is sent to the provider's login (${new URL(page.url()).pathname})`);
  await page.fill('#username', user);
  await page.fill('#password', password);
  await Promise.all([page.waitForURL((u) => u.host === new URL(url).host, { timeout: TIMEOUT }), page.click('button[type="submit"]')]);
  check(!onProvider(page), `${user} signed in at the provider and came back to the portal`);
}

try {
  // A member of team-payments.
  await signIn(page, allowedUser, allowedPassword);
  await page.waitForSelector('[data-title]', { timeout: TIMEOUT });
  check(true, 'the dashboard is shown');
  const who = await page.textContent('[data-account]');
  check(who.includes(`oidc:${allowedUser}@`), `the footer names the user as the API server does: ${who}`);
  await page.waitForSelector('#live[data-state="live"]', { timeout: TIMEOUT });
  const cookie = await session();
  check(cookie && cookie.secure && cookie.httpOnly && cookie.sameSite === 'Lax', `the session cookie is Secure, HttpOnly, SameSite=Lax: ${JSON.stringify(cookie && { secure: cookie.secure, httpOnly: cookie.httpOnly, sameSite: cookie.sameSite })}`);
  check(cookie.expires > Date.now() / 1000 && cookie.expires <= Date.now() / 1000 + 3700, 'it expires with the ID token (1 h at this provider)');
  check(!(await page.evaluate(() => document.cookie)).includes(SESSION), 'scripts cannot read it');

  // Live updates, signed in.
  const before = Number(await page.textContent('[data-tile="open-pull-requests"] .count'));
  const target = before + 7;
  kubectl('patch', 'workspace', ws, '-n', ns, '--subresource=status', '--type=merge', '-p',
    JSON.stringify({ status: { summary: { openPullRequests: target, failingPipelines: 0, openIssues: 0 } } }));
  await page.waitForFunction((n) => document.querySelector('[data-tile="open-pull-requests"] .count')?.textContent === String(n), target, { timeout: TIMEOUT });
  check(true, `the page followed a status change live (${before} -> ${target} open PRs)`);
  await page.screenshot({ path: join(artifacts, 'signed-in.png') });

  // A tampered cookie signs you out.
  const value = cookie.value;
  const i = Math.floor(value.length / 2);
  const flipped = value.slice(0, i) + (value[i] === 'A' ? 'B' : 'A') + value.slice(i + 1);
  await context.addCookies([{ ...cookie, value: flipped }]);
  await page.goto(url, { waitUntil: 'load' });
  check(onProvider(page), 'with a tampered session cookie the portal sends you to sign in again');
  check(!(await session()), 'and the tampered cookie is cleared');

  // Sign-out.
  await page.fill('#username', allowedUser);
  await page.fill('#password', allowedPassword);
  await Promise.all([page.waitForURL((u) => u.host === new URL(url).host, { timeout: TIMEOUT }), page.click('button[type="submit"]')]);
  await page.waitForSelector('[data-title]', { timeout: TIMEOUT });
  check(Boolean(await session()), 'signed in again');
  await Promise.all([page.waitForURL((u) => u.pathname === '/auth/signed-out', { timeout: TIMEOUT }), page.click('[data-sign-out]')]);
  check(!(await session()), 'sign-out clears the session cookie');
  await page.goto(url, { waitUntil: 'load' });
  check(onProvider(page), 'after sign-out the portal asks for sign-in again');

  check(problems.length === 0, `no console errors or CSP violations while signed in: ${problems.join('; ')}`);

  // A user whose groups RBAC does not allow (Chromium logs the 403 itself as a console error).
  await page.fill('#username', deniedUser);
  await page.fill('#password', deniedPassword);
  const [response] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).host === new URL(url).host && new URL(r.url()).pathname === '/', { timeout: TIMEOUT }),
    page.click('button[type="submit"]'),
  ]);
  check(response.status() === 403, `${deniedUser} gets 403 (${response.status()})`);
  const user = await page.textContent('[data-user]');
  const missing = await page.textContent('[data-missing]');
  check(user === `oidc:${deniedUser}@other.example`, `the page says who you are signed in as: ${user}`);
  check(missing === `get workspaces.hyperpage.dev "${ws}" in namespace "${ns}"`, `and which permission is missing: ${missing}`);
  check((await page.$$('[data-binding]')).length === 0, 'and shows no tenant data');
  await page.screenshot({ path: join(artifacts, 'forbidden.png') });
} finally {
  await close();
}
