// Drives the Switchboard dashboard in headless Chromium (playwright-core, Debian's chromium).
// Run by tests/it/browser.rs, which starts the service with data behind every page:
//
//   node tests/browser/console.mjs <base url> <admin token> <rules dir> <candidate rules dir> <artifacts dir>
//
// The candidate rules directory is for what-if: the test narrowed its `agent-missed-call` rule so
// that stored calls stop matching it. Midway the script creates `second-instance.request` in the
// artifacts dir; the test then records a second instance with another rule set and answers with
// `second-instance.ready`.
//
// Exits 0 when every step passed; otherwise prints the failed step and leaves failure.png (and
// the screenshots taken so far) in the artifacts dir.
import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync, unlinkSync, existsSync } from 'node:fs';
import { join } from 'node:path';

const [baseUrl, token, rulesDir, candidateDir, artifacts] = process.argv.slice(2);
if (!baseUrl || !token || !rulesDir || !candidateDir || !artifacts) {
  console.error('usage: node console.mjs <base url> <admin token> <rules dir> <candidate rules dir> <artifacts dir>');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });

const VIP_PHONE = '13800138000';
const NOTE = 'Called back: rebooked for Friday';
const BROKEN_RULE = 'broken-by-test.rhai';
const NARROWED_RULE = 'agent-missed-call';
const MUTE_REASON = 'Chat webhook under maintenance';
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const T = 15000;

const started = Date.now();
const log = (message) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${message}`);

function fail(message) {
  throw new Error(message);
}

// Polls `check` (which returns a truthy value when satisfied) until `ms` have passed.
async function until(what, check, { ms = T, every = 150 } = {}) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) fail(`timed out after ${ms} ms waiting for ${what}${last ? ` (${last.message})` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

async function shot(page, name) {
  // From the top, so that the sticky header is drawn where it belongs in a full-page shot.
  await page.evaluate(() => { window.scrollTo(0, 0); return document.fonts && document.fonts.ready; });
  const path = join(artifacts, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  log(`screenshot ${path}`);
}

const problems = [];
function watch(page, label) {
  page.on('pageerror', (e) => problems.push(`${label}: uncaught ${e.message}`));
  page.on('console', (m) => {
    // A 401 answer is expected in the sign-in checks, and a 400 in the what-if with a bad
    // directory; Chromium logs both itself.
    if (m.type() === 'error' && !/status of 40[01]/.test(m.text())) problems.push(`${label}: console error: ${m.text()}`);
  });
}

async function signIn(page, secret) {
  await page.goto(baseUrl);
  await page.locator('#token').waitFor();
  await page.fill('#token', secret);
  await page.click('form.login-card button[type=submit]');
}

async function go(page, hash) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await page.locator('.loading').waitFor({ state: 'detached', timeout: T });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});

let page;
try {
  const desktop = await browser.newContext({ viewport: DESKTOP, locale: 'en-GB', timezoneId: 'Asia/Tokyo' });
  page = await desktop.newPage();
  page.setDefaultTimeout(T);
  watch(page, 'desktop');

  // --- Sign-in: a wrong token is refused with a message; the right one opens the overview.
  log('wrong token');
  await signIn(page, 'not-the-admin-token');
  await until('the login error', async () => /not accepted/.test(await page.locator('#login-error').innerText()));
  if (await page.locator('#topbar').isVisible()) fail('the header shows before signing in');
  await shot(page, 'login-error');

  log('sign in');
  await page.fill('#token', token);
  await page.click('form.login-card button[type=submit]');
  await page.locator('[data-stat="events"] .stat-value').waitFor();
  const events = Number(await page.locator('[data-stat="events"] .stat-value').innerText());
  if (!(events >= 35)) fail(`the overview counts ${events} events, expected at least 35`);
  const failing = Number(await page.locator('[data-stat="failing"] .stat-value').innerText());
  if (failing !== 1) fail(`the overview counts ${failing} failing jobs, expected the 1 dead webhook`);
  const bars = await page.locator('.chart-bar').count();
  if (bars !== 60) fail(`the chart has ${bars} bars, expected 60`);
  const token0 = await page.evaluate(() => sessionStorage.getItem('switchboard.adminToken'));
  if (token0 !== token) fail('the token is not kept in sessionStorage');
  // This instance alone, agreeing with itself; the queue's health.
  await page.locator('.instance').first().waitFor();
  if ((await page.locator('.instance').count()) !== 1) fail('the overview lists more than this one instance');
  await page.locator('.instance', { hasText: 'this instance' }).waitFor();
  if (await page.locator('#instances-disagree').count()) fail('the overview warns of a disagreement with a single instance');
  const dead = Number(await page.locator('[data-health="dead"] .health-value').innerText());
  if (dead !== 1) fail(`the queue health counts ${dead} dead jobs, expected 1`);
  await page.locator('[data-health="due"] .health-value').waitFor();
  await shot(page, 'overview');

  // --- Events: search by phone, open the trace.
  log('events');
  await page.click('#nav a[data-section="events"]');
  await page.locator('table.table tbody tr').first().waitFor();
  await shot(page, 'events');
  await page.fill('input[name="phone"]', VIP_PHONE);
  await page.click('form.filters button[type=submit]');
  await until('the search to keep only the VIP call', async () => {
    const rows = await page.locator('table.table tbody tr').allInnerTexts();
    return rows.length === 1 && rows[0].includes(VIP_PHONE) && rows[0].includes('山田 花子');
  });
  if (!page.url().includes(`phone=${VIP_PHONE}`)) fail(`the search is not in the address: ${page.url()}`);
  // By outcome and matched rule: only the VIP call matched vip-missed.
  await page.fill('input[name="phone"]', '');
  await page.selectOption('select[name="outcome"]', 'queue_abandoned');
  await page.selectOption('select[name="rule"]', 'vip-missed');
  await page.click('form.filters button[type=submit]');
  await until('the outcome and rule search', async () => {
    const rows = await page.locator('table.table tbody tr').allInnerTexts();
    return page.url().includes('rule=vip-missed') && rows.length === 1 && rows[0].includes(VIP_PHONE);
  });
  await shot(page, 'events-search');
  await page.locator('table.table tbody tr').first().click();
  await page.locator('h1', { hasText: /^Event #\d+$/ }).waitFor();
  await page.locator('.verdict[data-verdict="matched"]', { hasText: 'abandoned-in-queue' }).waitFor();
  await page.locator('.verdict[data-verdict="matched"]', { hasText: 'vip-missed' }).waitFor();
  const deadJob = page.locator('.job[data-status="dead"]', { hasText: 'webhook' });
  await deadJob.waitFor();
  await deadJob.locator('td', { hasText: '404' }).first().waitFor();
  await page.locator('.job[data-status="done"]', { hasText: 'email' }).first().waitFor();
  await page.locator('pre.code', { hasText: '"call_result": "待機放棄"' }).waitFor();
  await page.locator('.facts dd', { hasText: 'vip-line' }).first().waitFor();
  const jobId = await deadJob.getAttribute('data-job');
  await shot(page, 'event-trace');

  // --- Jobs: the dead webhook job, retried from the list; its page shows it done.
  log(`retry dead job #${jobId}`);
  await page.click('#nav a[data-section="jobs"]');
  await page.locator('.tabs a', { hasText: 'Dead' }).click();
  const row = page.locator('table.table tbody tr', { hasText: `#${jobId}` });
  await row.waitFor();
  await shot(page, 'jobs-dead');
  await row.locator('button[data-action="retry"]').click();
  await page.locator('.toast', { hasText: `Job #${jobId} queued for another attempt` }).waitFor();
  await go(page, `#/jobs/${jobId}`);
  await until('the retried job to be done', async () => (await page.locator('#job-status').innerText()).trim() === 'done');
  const attempts = await page.locator('table.table tbody tr').count();
  if (attempts !== 2) fail(`the job page lists ${attempts} attempts, expected 2 (404, then success)`);
  await shot(page, 'job-done');

  // --- Replay: an unanswered call (agent-missed-call emails the supervisor), as a dry run, then
  // for real after the confirm step; the new job shows in the trace.
  log('replay');
  await go(page, `#/events?rule=${NARROWED_RULE}`);
  await page.locator('table.table tbody tr').first().click();
  await page.locator('h1', { hasText: /^Event #\d+$/ }).waitFor();
  const replayedId = (await page.locator('h1').innerText()).replace(/\D/g, '');
  const jobsBefore = await page.locator('.job').count();
  if (jobsBefore !== 1) fail(`the unanswered call has ${jobsBefore} jobs, expected its 1 email`);
  await page.click('button[data-action="dry-run"]');
  const dry = page.locator('.replay-result[data-replay="dry-run"]');
  await dry.locator(`[data-matched="${NARROWED_RULE}"]`).waitFor();
  await dry.locator('code', { hasText: 'email' }).first().waitFor();
  if ((await page.locator('.job').count()) !== jobsBefore) fail('a dry run added a job');
  await shot(page, 'event-replay-dry-run');
  await page.click('button[data-action="replay"]');
  await page.locator('.inline-form.confirm').waitFor();
  await page.click('button[data-action="confirm-replay"]');
  await page.locator('.replay-result[data-replay="real"] [data-queued="1"]').waitFor();
  await until('the replayed job to show in the trace', async () => (await page.locator('.job').count()) === jobsBefore + 1);
  await page.locator('.job [data-replayed]').first().waitFor();
  await until('the replayed email to be sent', async () => (await page.locator('.job[data-status="done"]').count()) === jobsBefore + 1, { ms: 20000 });
  await shot(page, 'event-replay');

  // --- Callback tasks: claim the VIP caller's task, then complete it with a note.
  log('callback task');
  await page.click('#nav a[data-section="tasks"]');
  const task = page.locator('.task', { hasText: VIP_PHONE });
  await task.waitFor();
  await shot(page, 'tasks');
  await task.locator('button[data-action="claim"]').click();
  await task.locator('input[name="agent"]').fill('Aiko Tanaka');
  await task.locator('form[data-form="claim"] button[type=submit]').click();
  await page.locator('.task.task-claimed', { hasText: VIP_PHONE }).locator('text=Aiko Tanaka').waitFor();
  const claimed = page.locator('.task', { hasText: VIP_PHONE });
  await claimed.locator('button[data-action="complete"]').click();
  await claimed.locator('textarea[name="note"]').fill(NOTE);
  await claimed.locator('form[data-form="complete"] button[type=submit]').click();
  await page.locator('.toast', { hasText: `Task for ${VIP_PHONE} marked done` }).waitFor();
  await until('the completed task to leave the queue', async () => (await page.locator('.task', { hasText: VIP_PHONE }).count()) === 0);
  await page.locator('.tabs a', { hasText: 'Done' }).click();
  await page.locator('.task.task-done', { hasText: VIP_PHONE }).locator('.task-outcome', { hasText: NOTE }).waitFor();
  await shot(page, 'tasks-done');

  // --- Rules: a broken file shows its error with line and column; fixing it clears it.
  log('rules');
  await page.click('#nav a[data-section="rules"]');
  await page.locator('.rule').first().waitFor();
  if (await page.locator('.rule-problem').count()) fail('a rule error shows before any rule is broken');
  await shot(page, 'rules');
  const brokenPath = join(rulesDir, BROKEN_RULE);
  writeFileSync(brokenPath, 'const NAME = "broken-by-test";\n\nfn when(ev) {\n    ev.queue_time > \n}\n\nfn then(ev) { [] }\n');
  const problem = page.locator(`.rule[data-rule="${BROKEN_RULE}"] .rule-problem`);
  const where = await until('the broken rule to show its error', async () => {
    if (!(await problem.count())) return null;
    const text = await problem.innerText();
    return /broken-by-test\.rhai:\d+:\d+/.test(text) ? text : null;
  }, { ms: 20000, every: 250 });
  log(`rule error shown: ${where.split('\n')[0]}`);
  await page.locator('.summary-bar.tone-bad').waitFor();
  await shot(page, 'rules-error');
  writeFileSync(brokenPath, 'const NAME = "broken-by-test";\n\nfn when(ev) {\n    ev.queue_time > 600\n}\n\nfn then(ev) { [] }\n');
  await until('the fixed rule to compile', async () =>
    (await problem.count()) === 0 &&
    (await page.locator(`.rule[data-rule="${BROKEN_RULE}"] .badge`).first().innerText()).trim() === 'ok',
  { ms: 20000, every: 250 });
  await page.locator('.summary-bar.tone-good').waitFor();
  unlinkSync(brokenPath);

  // --- What if: a bad directory is refused next to its field; the candidate narrows a rule.
  log('what-if');
  await page.locator('.tabs a', { hasText: 'What if' }).click();
  await page.locator('form.what-if-form').waitFor();
  if ((await page.inputValue('input[name="since"]')) !== '7d') fail('the what-if form does not default to the last 7 days');
  await page.fill('input[name="rules_dir"]', join(candidateDir, 'no-such-dir'));
  await page.click('button[data-action="what-if"]');
  const dirError = page.locator('[data-field="rules_dir"] .field-error');
  await until('the rules_dir error next to its field', async () => (await dirError.isVisible()) && /does not exist/.test(await dirError.innerText()));
  if ((await page.getAttribute('input[name="rules_dir"]', 'aria-invalid')) !== 'true') fail('the bad rules_dir is not marked invalid');
  await shot(page, 'what-if-error');
  await page.fill('input[name="rules_dir"]', candidateDir);
  await page.click('button[data-action="what-if"]');
  const changedRule = page.locator(`.what-if-rule[data-rule="${NARROWED_RULE}"]`);
  await changedRule.waitFor({ timeout: 30000 });
  if (await dirError.isVisible()) fail('the rules_dir error stays after a good run');
  const changedText = await changedRule.innerText();
  const stops = Number((/(\d+) no longer matching/.exec(changedText) || [])[1]);
  if (!(stops > 0)) fail(`the narrowed rule stops matching ${stops} events:\n${changedText}`);
  const compared = Number(await page.locator('[data-stat="compared"] .stat-value').innerText());
  if (!(compared >= 35)) fail(`what-if compared ${compared} events, expected the history`);
  await page.locator('[data-unchanged="abandoned-in-queue"]').waitFor();
  const example = changedRule.locator('[data-example]').first();
  const exampleId = await example.getAttribute('data-example');
  await changedRule.locator('.badge', { hasText: 'no longer matches' }).first().waitFor();
  await shot(page, 'what-if');
  await example.click();
  await page.locator('h1', { hasText: `Event #${exampleId}` }).waitFor();
  await page.locator('.verdict[data-verdict="matched"]', { hasText: NARROWED_RULE }).waitFor();
  await page.goBack();
  await changedRule.waitFor();

  // --- Mutes: silence a rule, see it in force (here and on the rules page), lift it.
  log('mutes');
  await page.click('#nav a[data-section="mutes"]');
  await page.locator('form.mute-form').waitFor();
  await page.locator('.empty', { hasText: 'Nothing is muted' }).waitFor();
  await page.selectOption('select[name="rule"]', 'vip-missed');
  await page.fill('input[name="reason"]', MUTE_REASON);
  await page.click('button[data-action="mute"]');
  const muteRow = page.locator('table.table tbody tr', { hasText: 'vip-missed' });
  await muteRow.locator('.badge', { hasText: 'in force' }).waitFor();
  await muteRow.locator('td', { hasText: MUTE_REASON }).waitFor();
  await shot(page, 'mutes');
  await go(page, '#/rules');
  await page.locator('.rule', { hasText: 'vip-missed' }).locator('.badge', { hasText: 'muted until' }).waitFor();
  await go(page, '#/mutes');
  await page.locator('table.table tbody tr', { hasText: 'vip-missed' }).locator('button[data-action="lift"]').click();
  await page.locator('.toast', { hasText: 'lifted' }).waitFor();
  await page.locator('.empty', { hasText: 'Nothing is muted' }).waitFor();
  await page.check('input[name="all"]');
  await page.locator('table.table tbody tr', { hasText: 'vip-missed' }).locator('.badge', { hasText: 'lifted' }).waitFor();
  await shot(page, 'mutes-all');
  await page.click('#nav a[data-section="jobs"]');
  await page.locator('.tabs a', { hasText: 'Muted' }).click();
  await until('the muted jobs tab', async () => page.url().endsWith('status=muted'));
  await page.locator('.empty', { hasText: 'No muted jobs' }).waitFor();

  // --- Instances: a second instance on another rule set is named in a warning.
  log('instances disagree');
  writeFileSync(join(artifacts, 'second-instance.request'), '');
  await until('the test to record a second instance', async () => existsSync(join(artifacts, 'second-instance.ready')), { ms: 10000 });
  await go(page, '#/');
  const warning = page.locator('#instances-disagree');
  await warning.waitFor();
  const warned = await warning.innerText();
  if (!/different rule sets/.test(warned) || !warned.includes('sb-other-test') || !/this one/.test(warned)) fail(`the warning does not name the instances:\n${warned}`);
  if ((await page.locator('.instance').count()) !== 2) fail('the overview does not list both instances');
  await shot(page, 'overview-instances-disagree');
  await go(page, '#/rules');
  await page.locator('#instances-disagree', { hasText: 'sb-other-test' }).waitFor();

  // --- A token that stops working mid-session sends the operator back to sign in, with why.
  log('revoked token');
  await page.evaluate(() => sessionStorage.setItem('switchboard.adminToken', 'revoked'));
  await page.reload();
  await until('the 401 to return to the login page', async () =>
    (await page.locator('#login-error').isVisible()) && /401/.test(await page.locator('#login-error').innerText()));
  await shot(page, 'login-expired');

  // --- Sign out.
  log('sign out');
  await page.fill('#token', token);
  await page.click('form.login-card button[type=submit]');
  await until('the return to the rules page', async () => page.url().endsWith('#/rules'));
  await page.click('#logout');
  await until('the signed-out notice', async () => /signed out/.test(await page.locator('#login-error').innerText()));
  if (await page.evaluate(() => sessionStorage.getItem('switchboard.adminToken'))) fail('signing out kept the token');
  await desktop.close();

  // --- Phone width: the same pages fit a 390 px screen.
  log('phone width');
  const phone = await browser.newContext({
    viewport: PHONE, deviceScaleFactor: 2, isMobile: true, hasTouch: true, locale: 'en-GB', timezoneId: 'Asia/Tokyo',
  });
  page = await phone.newPage();
  page.setDefaultTimeout(T);
  watch(page, 'phone');
  await signIn(page, token);
  await page.locator('[data-stat="events"] .stat-value').waitFor();
  const overflow = async () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if ((await overflow()) > 0) fail(`the overview is ${await overflow()} px wider than a phone screen`);
  await shot(page, 'phone-overview');
  await go(page, '#/tasks');
  await page.locator('.task').first().waitFor();
  if ((await overflow()) > 0) fail(`the tasks page is ${await overflow()} px wider than a phone screen`);
  await shot(page, 'phone-tasks');
  await go(page, '#/events');
  await page.locator('table.table tbody tr').first().waitFor();
  if ((await overflow()) > 0) fail(`the events page is ${await overflow()} px wider than a phone screen`);
  await shot(page, 'phone-events');
  await go(page, `#/jobs/${jobId}`);
  await page.locator('#job-status').waitFor();
  await shot(page, 'phone-job');
  await go(page, `#/events/${replayedId}`);
  await page.click('button[data-action="dry-run"]');
  await page.locator('.replay-result[data-replay="dry-run"]').waitFor();
  if ((await overflow()) > 0) fail(`the event trace is ${await overflow()} px wider than a phone screen`);
  await shot(page, 'phone-replay');
  await go(page, '#/rules/what-if');
  await page.fill('input[name="rules_dir"]', candidateDir);
  await page.click('button[data-action="what-if"]');
  await page.locator(`.what-if-rule[data-rule="${NARROWED_RULE}"]`).waitFor({ timeout: 30000 });
  if ((await overflow()) > 0) fail(`the what-if report is ${await overflow()} px wider than a phone screen`);
  await shot(page, 'phone-what-if');
  await go(page, '#/mutes?all=true');
  await page.locator('table.table tbody tr').first().waitFor();
  if ((await overflow()) > 0) fail(`the mutes page is ${await overflow()} px wider than a phone screen`);
  await shot(page, 'phone-mutes');
  await phone.close();

  if (problems.length) fail(`the pages reported errors:\n  ${problems.join('\n  ')}`);
  log('all dashboard checks passed');
} catch (e) {
  console.error(`FAILED: ${e.message}`);
  if (page) {
    try {
      await page.screenshot({ path: join(artifacts, 'failure.png'), fullPage: true });
      console.error(`page at failure: ${page.url()} (failure.png)`);
    } catch (_) { /* the page may be gone */ }
  }
  if (problems.length) console.error(`page errors:\n  ${problems.join('\n  ')}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
