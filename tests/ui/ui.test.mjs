// End-to-end tests of Berth's web UI in headless Chromium (Debian's, driven by
// playwright-core; no browser download), against a berth that
// scripts/e2e-ui.sh started and filled with real clients. Run through that
// script, which passes what it made in E2E_UI_* variables:
//
//   E2E_UI_URL           http://127.0.0.1:PORT of berth
//   E2E_UI_REG           127.0.0.1:PORT, for skopeo
//   E2E_UI_ADMIN_PW      the password of the local administrator `admin`
//   E2E_UI_CHROMIUM      the browser (default /usr/bin/chromium)
//   E2E_UI_SHOTS         where full-page screenshots go (target/ui-screenshots)
//   E2E_UI_DOCS_DIR      when set, where docs/ui.md's screenshots go
//   E2E_UI_ROBOT_LAYOUT  an OCI layout (tag v1) the robot token pushes
//   E2E_UI_MULTI_INDEX   the digest of public/app:v1, a multi-arch index
//   E2E_UI_SIGNATURE     the digest of its cosign signature (a referrer)
//   E2E_UI_HOSTILE       the digest of public/hostile:1 (hostile annotations)
//
// The tests run in order and share one browser; each makes its own context.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import AxeBuilder from '@axe-core/playwright';
import { chromium } from 'playwright-core';

function env(name, fallback) {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set: run scripts/e2e-ui.sh`);
  return v;
}

const BASE = env('E2E_UI_URL');
const REG = env('E2E_UI_REG');
const ADMIN_PW = env('E2E_UI_ADMIN_PW');
const SHOTS = env('E2E_UI_SHOTS');
const DOCS_DIR = process.env.E2E_UI_DOCS_DIR || '';
const ROBOT_LAYOUT = env('E2E_UI_ROBOT_LAYOUT');
const INDEX = env('E2E_UI_MULTI_INDEX');
const SIGNATURE = env('E2E_UI_SIGNATURE');
const HOSTILE = env('E2E_UI_HOSTILE');

/** No page may be heavier than this on its first load (all bodies summed). */
const MAX_PAGE_BYTES = 300 * 1024;
const VIEWPORT = { width: 1280, height: 800 };

let browser;
let adminState; // the administrator's cookies, once signed in
/** Every dialog a page opened that no test asked for: each one a failure. */
const unexpectedDialogs = [];

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  if (DOCS_DIR) mkdirSync(DOCS_DIR, { recursive: true });
  // The flags that keep Chromium off the network this machine does not have.
  // Playwright gives each launch a fresh profile of its own under TMPDIR.
  browser = await chromium.launch({
    executablePath: env('E2E_UI_CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
});

/** A new context (anonymous, or with `storageState`), its pages watched for dialogs. */
async function newContext(options = {}) {
  const context = await browser.newContext({ viewport: VIEWPORT, ...options });
  context.on('page', (page) => {
    page.consoleErrors = [];
    page.on('console', (m) => { if (m.type() === 'error') page.consoleErrors.push(m.text()); });
    page.on('dialog', async (dialog) => {
      if (page.allowConfirm && dialog.type() === 'confirm') {
        page.confirmed = (page.confirmed || []).concat(dialog.message());
        await dialog.accept();
        return;
      }
      unexpectedDialogs.push(`${dialog.type()} on ${page.url()}: ${dialog.message()}`);
      await dialog.dismiss();
    });
  });
  return context;
}

async function adminContext(options = {}) {
  assert.ok(adminState, 'the administrator signed in (the sign-in test passed)');
  return newContext({ storageState: adminState, ...options });
}

/**
 * Opens `path` in a new page of `context`, counting the bytes of every
 * response body of that first load; returns { page, status, bytes }.
 */
async function visit(context, path) {
  const page = await context.newPage();
  const bodies = [];
  page.on('response', (response) => {
    if (response.status() >= 300 && response.status() < 400) return; // redirects have no body to read
    bodies.push(response.body().then((b) => b.length, () => 0));
  });
  const response = await page.goto(BASE + path, { waitUntil: 'load' });
  const bytes = (await Promise.all(bodies)).reduce((a, b) => a + b, 0);
  return { page, status: response.status(), bytes };
}

/**
 * Waits until the page is at `path` (its pathname, percent-decoded; and the
 * query too when `path` has one); a timeout says where the page is instead.
 */
async function arrive(page, path) {
  const want = decodeURIComponent(path);
  const at = (url) => decodeURIComponent(want.includes('?') ? url.pathname + url.search : url.pathname) === want;
  try {
    await page.waitForURL(at, { timeout: 10_000 });
  } catch (e) {
    const text = await page.locator('body').innerText().catch(() => '');
    const errors = (page.consoleErrors || []).join('\n');
    throw new Error(`expected to arrive at ${path}, but the page is ${page.url()}:\n${text.slice(0, 800)}`
      + `${errors ? `\nconsole errors:\n${errors}` : ''}`);
  }
}

async function shot(page, name, { docs = false } = {}) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  if (docs && DOCS_DIR) {
    await page.screenshot({ path: join(DOCS_DIR, `${name}.png`), fullPage: false });
  }
}

function skopeoPush(secret, ref) {
  const out = spawnSync('skopeo', [
    '--insecure-policy', 'copy', '--dest-tls-verify=false', '--dest-creds', `any:${secret}`,
    `oci:${ROBOT_LAYOUT}:v1`, `docker://${REG}/${ref}`,
  ], { encoding: 'utf8', timeout: 120_000 });
  return { ok: out.status === 0, output: `${out.stdout}\n${out.stderr}` };
}

const repoPath = (name) => `/ui/r/${name}`;
const manifestPath = (name, digest, tag) => `/ui/r/${name}/-/manifest/${digest}${tag ? `?tag=${tag}` : ''}`;

// ---------------------------------------------------------------- sign-in ----

test('a local administrator signs in with the form', async () => {
  const context = await newContext();
  const { page, status } = await visit(context, '/ui/login');
  assert.equal(status, 200);
  await shot(page, 'login', { docs: true });
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill(ADMIN_PW);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await arrive(page, '/ui/');
  assert.match(await page.locator('header .who').innerText(), /Signed in as\s+admin/);
  await page.getByRole('link', { name: 'Admin' }).click();
  await arrive(page, '/ui/admin');
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Administration');
  adminState = await context.storageState();
  const session = adminState.cookies.find((c) => c.name === 'berth_session');
  assert.ok(session, 'a session cookie');
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, 'Lax');
  await context.close();
});

test('a wrong password is refused on the form', async () => {
  const context = await newContext();
  const { page } = await visit(context, '/ui/login');
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill('not-the-password');
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForLoadState();
  assert.ok(await page.getByRole('alert').isVisible(), 'an error notice');
  assert.equal((await context.cookies()).some((c) => c.name === 'berth_session'), false);
  await context.close();
});

test('single sign-on through the OpenID Connect provider provisions the user', async () => {
  const context = await newContext();
  const { page } = await visit(context, '/ui/login');
  // The test provider logs in as the login_hint without a page of its own.
  await page.getByLabel('Account (optional)').fill('carol');
  await page.getByRole('button', { name: 'Sign in with the test provider' }).click();
  await arrive(page, '/ui/');
  assert.match(await page.locator('header .who').innerText(), /Signed in as\s+carol/);
  await page.getByRole('link', { name: 'Account' }).click();
  const account = await page.locator('main').innerText();
  assert.match(account, /home\/carol\/\*\*/, "the claim rule's grant");
  assert.match(account, /team\/\*\*/, "the group's grant");
  await shot(page, 'account-sso');
  // carol's group may pull team/**, so she sees it; no admin link.
  await page.getByRole('link', { name: 'Repositories' }).click();
  assert.ok(await page.getByRole('link', { name: 'team/api' }).isVisible());
  assert.equal(await page.getByRole('link', { name: 'Admin' }).count(), 0);
  await context.close();

  // The administrator sees her, provisioned through single sign-on.
  const admin = await adminContext();
  const { page: users } = await visit(admin, '/ui/admin/users');
  const row = users.getByRole('row').filter({ hasText: 'carol' });
  assert.match(await row.innerText(), /single sign-on/);
  await admin.close();
});

// --------------------------------------------------------------- browsing ----

test('browse a multi-arch image and its signature', async () => {
  const context = await adminContext();
  const { page } = await visit(context, '/ui/repositories');
  await page.getByRole('link', { name: 'public/app' }).click();
  await arrive(page, repoPath('public/app'));
  await shot(page, 'repository', { docs: true });
  const tagRow = page.getByRole('row').filter({ has: page.getByRole('link', { name: 'v1', exact: true }) });
  assert.match(await tagRow.innerText(), /linux\/amd64, linux\/arm64\/v8/);
  assert.match(await page.locator('#pull-docker').inputValue(), new RegExp(`docker pull ${REG}/public/app:v1`));

  await tagRow.getByRole('link', { name: 'v1', exact: true }).click();
  await arrive(page, manifestPath('public/app', INDEX, 'v1'));
  await shot(page, 'manifest', { docs: true });
  const main = await page.locator('main').innerText();
  assert.match(main, new RegExp(INDEX));
  const platforms = page.locator('table').filter({ has: page.getByRole('columnheader', { name: 'Platform' }) });
  const text = await platforms.innerText();
  assert.match(text, /linux\/amd64/);
  assert.match(text, /linux\/arm64\/v8/);
  const sigRow = page.getByRole('row').filter({ hasText: 'application/vnd.dev.cosign.artifact.sig.v1+json' });
  assert.match(await sigRow.innerText(), /signature/);
  await sigRow.getByRole('link', { name: SIGNATURE.slice(7, 19) }).click();
  await arrive(page, manifestPath('public/app', SIGNATURE));
  assert.match(await page.locator('main').innerText(), /dev\.cosignproject\.cosign\/signature/);

  // A platform's own manifest, with its configuration.
  await page.goBack();
  await platforms.getByRole('link').first().click();
  await page.waitForLoadState();
  assert.ok(await page.getByRole('heading', { name: 'Configuration' }).isVisible());
  await context.close();
});

test('anonymous visitors see only what anonymous pull allows', async () => {
  const context = await newContext();
  const { page } = await visit(context, '/ui/repositories');
  assert.ok(await page.getByRole('link', { name: 'public/app' }).isVisible());
  assert.equal(await page.getByRole('link', { name: 'team/api' }).count(), 0);
  const { status } = await visit(context, repoPath('team/api'));
  assert.equal(status, 401);
  await context.close();
});

test('search by prefix and by substring', async () => {
  const context = await adminContext();
  const { page } = await visit(context, '/ui/');
  const search = async (q) => {
    await page.getByLabel('Search repositories').fill(q);
    await page.getByRole('button', { name: 'Search' }).click();
    await page.waitForURL(/\/ui\/repositories\?q=/);
    return page.locator('main table').innerText().catch(() => '');
  };
  let found = await search('TEAM');
  assert.match(found, /team\/api/);
  assert.match(found, /team\/web/);
  assert.doesNotMatch(found, /tools\/zeta|public\/app/);
  await shot(page, 'search');
  found = await search('eta');
  assert.match(found, /tools\/zeta/);
  assert.doesNotMatch(found, /team\//);
  await context.close();
});

test('star a repository and find it under Starred', async () => {
  const context = await adminContext();
  const { page } = await visit(context, repoPath('team/api'));
  const star = page.getByRole('button', { name: 'Star', exact: true });
  assert.equal(await star.getAttribute('aria-pressed'), 'false');
  await star.click();
  await page.waitForLoadState();
  const unstar = page.getByRole('button', { name: 'Unstar' });
  assert.equal(await unstar.getAttribute('aria-pressed'), 'true');
  assert.match(await page.locator('main').innerText(), /1 star\b/);
  await page.getByRole('link', { name: 'Starred' }).click();
  await arrive(page, '/ui/starred');
  assert.ok(await page.getByRole('link', { name: 'team/api' }).isVisible());
  assert.equal(await page.getByRole('link', { name: 'team/web' }).count(), 0);
  await shot(page, 'starred');
  await context.close();
});

// ------------------------------------------------------------------ admin ----

test('the retention preview follows the draft', async () => {
  const context = await adminContext();
  const { page } = await visit(context, '/ui/admin/retention');
  const preview = async (rules) => {
    await page.getByLabel('Repositories (pattern)').fill('keep/**');
    await page.getByLabel('Rules', { exact: true }).fill(rules);
    await page.getByRole('button', { name: 'Preview' }).click();
    await page.waitForURL(/\/ui\/admin\/retention\?pattern=/);
    const summary = await page.locator('#preview + p').innerText();
    const deletions = await page.locator('#preview-table tbody tr').filter({ hasText: 'delete' }).count();
    return { summary, deletions };
  };
  const two = await preview('{"keep_last": 2}');
  assert.match(two.summary, /3 tags to delete/);
  assert.equal(two.deletions, 3);
  await shot(page, 'retention-preview', { docs: true });
  const four = await preview('{"keep_last": 4}');
  assert.match(four.summary, /1 tag to delete/);
  assert.equal(four.deletions, 1);
  assert.notEqual(two.summary, four.summary, 'the preview changed with keep_last');
  // The oldest tag goes first.
  assert.match(await page.locator('#preview-table tbody tr').first().innerText(), /t0/);
  // A draft that is not valid says so and previews nothing.
  await page.getByLabel('Rules', { exact: true }).fill('{"keep_lats": 4}');
  await page.getByRole('button', { name: 'Preview' }).click();
  await page.waitForLoadState();
  assert.match(await page.getByRole('alert').innerText(), /not valid/);
  await context.close();
});

test('a robot token made in the UI pushes until it is revoked there', async () => {
  const context = await adminContext();
  const { page } = await visit(context, '/ui/admin/tokens');
  await page.getByLabel('Name').fill('ci-bot');
  await page.getByLabel(/^Grants/).fill('ci/*:push');
  await page.getByRole('button', { name: 'Create token' }).click();
  await page.waitForLoadState();
  const secret = await page.locator('#new-secret').inputValue();
  assert.ok(secret.length > 20, 'the secret is shown once');
  assert.ok(await page.getByRole('button', { name: 'Copy' }).isVisible(), 'the script shows the copy button');
  await shot(page, 'tokens', { docs: true });

  const first = skopeoPush(secret, 'ci/app:1');
  assert.ok(first.ok, `skopeo push with the robot token: ${first.output}`);

  // Shown only once: a reload does not show it again.
  await page.goto(`${BASE}/ui/admin/tokens`);
  assert.equal(await page.locator('#new-secret').count(), 0);
  assert.doesNotMatch(await page.content(), new RegExp(secret));
  page.allowConfirm = true;
  await page.getByRole('button', { name: 'Revoke ci-bot' }).click();
  await page.waitForLoadState();
  assert.deepEqual(page.confirmed, ['Revoke ci-bot? Clients using it will fail.'], 'the script asked first');
  assert.match(await page.getByRole('status').innerText(), /Robot token ci-bot revoked/);
  const row = page.getByRole('row').filter({ hasText: 'ci-bot' });
  assert.match(await row.innerText(), /revoked/);

  const second = skopeoPush(secret, 'ci/app:2');
  assert.equal(second.ok, false, 'a push with the revoked token must fail');
  assert.match(second.output, /unauthori[sz]ed|denied|401/i);
  await context.close();
});

// --------------------------------------------------------------- security ----

test('hostile annotations, repository names and search text are rendered inert', async () => {
  const context = await adminContext();
  const { page } = await visit(context, manifestPath('public/hostile', HOSTILE, '1'));
  const json = await page.getByLabel('Manifest JSON').innerText();
  assert.ok(json.includes('<script>alert(1)</script>'), 'the annotation shows as text');
  assert.ok(json.includes('<img src=x onerror=alert(2)>'), 'the annotation shows as text');
  assert.equal(await page.locator('main img').count(), 0, 'no image element was made');
  assert.equal(await page.locator('main script').count(), 0, 'no script element was made');
  await shot(page, 'hostile-manifest');

  // A name that is markup is no repository: a 404 page that does not echo it.
  const named = await visit(context, '/ui/r/%3Cscript%3Ealert(3)%3C%2Fscript%3E');
  assert.equal(named.status, 404);
  assert.equal(await named.page.locator('script:not([src])').count(), 0);

  // Search text is shown back as text.
  const { page: list } = await visit(context, '/ui/repositories');
  await list.getByLabel('Search repositories').fill('"><img src=x onerror=alert(4)>');
  await list.getByRole('button', { name: 'Search' }).click();
  await list.waitForLoadState();
  assert.equal(await list.getByLabel('Search repositories').inputValue(), '"><img src=x onerror=alert(4)>');
  assert.equal(await list.locator('main img').count(), 0);

  // Give any onerror handler a moment to fire.
  await list.waitForTimeout(500);
  assert.deepEqual(unexpectedDialogs, [], 'no page opened a dialog');
  await context.close();
});

test('pages are readable without JavaScript', async () => {
  const context = await newContext({ javaScriptEnabled: false });
  for (const [path, expected] of [
    ['/ui/', /public\/app/],
    ['/ui/repositories', /public\/app/],
    [repoPath('public/app'), /linux\/amd64, linux\/arm64\/v8/],
    [manifestPath('public/app', INDEX, 'v1'), /linux\/arm64\/v8/],
  ]) {
    const { page, status } = await visit(context, path);
    assert.equal(status, 200, path);
    assert.match(await page.locator('main').innerText(), expected, path);
    // The copy buttons need the script: without it they stay hidden.
    assert.equal(await page.locator('[data-copy]:visible').count(), 0, path);
  }
  await context.close();
});

// ---------------------------------------------- accessibility and weight ----

const PAGES = [
  // [name, path, signed in]
  ['home', '/ui/', true],
  ['repositories', '/ui/repositories', true],
  ['repository', repoPath('public/app'), true],
  ['manifest-index', manifestPath('public/app', INDEX, 'v1'), true],
  ['starred', '/ui/starred', true],
  ['account', '/ui/account', true],
  ['delete-confirmation', `${repoPath('keep/app')}/-/delete?tag=t4`, true],
  ['admin-dashboard', '/ui/admin', true],
  ['admin-users', '/ui/admin/users', true],
  ['admin-tokens', '/ui/admin/tokens', true],
  ['admin-grants', '/ui/admin/grants', true],
  ['admin-sessions', '/ui/admin/sessions', true],
  ['admin-retention-preview', `/ui/admin/retention?pattern=${encodeURIComponent('keep/**')}&rules=${encodeURIComponent('{"keep_last": 2}')}`, true],
  ['admin-gc', '/ui/admin/gc', true],
  ['login', '/ui/login', false],
  ['home-anonymous', '/ui/', false],
  ['not-found', '/ui/r/no/such/repository', false],
];

test('every page passes axe (WCAG 2 A and AA) without serious or critical violations, and weighs under 300 KB', async () => {
  const problems = [];
  for (const [name, path, signedIn] of PAGES) {
    // A fresh context per page: nothing cached, so this is a first load.
    const context = signedIn ? await adminContext() : await newContext();
    const { page, bytes } = await visit(context, path);
    if (bytes > MAX_PAGE_BYTES) problems.push(`${name} (${path}): ${bytes} bytes on first load, over ${MAX_PAGE_BYTES}`);
    await shot(page, name, { docs: name === 'home' });
    const results = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa']).analyze();
    const lesser = results.violations.filter((v) => v.impact !== 'serious' && v.impact !== 'critical');
    // One line per page in the log: what was checked, and what axe found below the bar.
    console.log(`axe ${name}: ${results.passes.length} rules passed, ${results.incomplete.length} to review`
      + `${results.incomplete.map((v) => ` (${v.id}: ${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(', ')})`).join('')}${lesser.map((v) => `, ${v.impact} ${v.id}`).join('')}; ${bytes} bytes`);
    for (const v of results.violations) {
      if (v.impact !== 'serious' && v.impact !== 'critical') continue;
      const where = v.nodes.slice(0, 3).map((n) => `${n.target.join(' ')}: ${n.failureSummary.replace(/\s+/g, ' ')}`);
      problems.push(`${name} (${path}): ${v.impact} ${v.id}: ${v.help}\n    ${where.join('\n    ')}`);
    }
    await context.close();
  }
  assert.deepEqual(problems, [], `\n${problems.join('\n')}`);
});

test('no page opened a dialog nobody asked for', () => {
  assert.deepEqual(unexpectedDialogs, []);
});
