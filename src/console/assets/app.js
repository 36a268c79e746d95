// Switchboard operator dashboard: a small single-page app over the admin JSON API.
// Hash routes (#/, #/events, #/events/ID, #/jobs, #/jobs/ID, #/tasks, #/rules, #/rules/what-if,
// #/mutes, #/login).
// Every value from the API reaches the page as a text node or an attribute value set through the
// DOM (never as HTML), so nothing the server stores can run as markup.
'use strict';

const TOKEN_KEY = 'switchboard.adminToken';
const AGENT_KEY = 'switchboard.agent';

const OUTCOMES = [
  ['customer_no_answer', 'Customer did not answer'],
  ['customer_answered', 'Customer answered'],
  ['busy', 'Busy'],
  ['phone_offline', 'Phone offline'],
  ['agent_no_answer', 'Agent did not answer'],
  ['agent_rejected', 'Agent rejected'],
  ['agent_answered', 'Agent answered'],
  ['customer_hung_up_immediately', 'Customer hung up at once'],
  ['customer_hung_up', 'Customer hung up'],
  ['queue_timeout', 'Queue timeout'],
  ['queue_abandoned', 'Abandoned in queue'],
  ['no_queue_selected', 'No queue selected'],
];
const OUTCOME_LABEL = Object.fromEntries(OUTCOMES);
const JOB_STATUSES = ['dead', 'retrying', 'pending', 'done', 'suppressed', 'muted', 'cancelled'];
const TASK_STATUSES = ['open', 'claimed', 'done', 'cancelled'];
const BADGE_TONE = {
  ok: 'good', active: 'good', done: 'good', processed: 'good', matched: 'good', success: 'good',
  dead: 'bad', error: 'bad', failed: 'bad', permanent: 'bad',
  retrying: 'warn', transient: 'warn', throttled: 'warn', processing: 'info',
  pending: 'info', open: 'info', claimed: 'violet', quarantined: 'bad', unreadable: 'bad',
  suppressed: 'muted', muted: 'muted', cancelled: 'muted', disabled: 'muted', 'not matched': 'muted',
  newly_matches: 'info', stops_matching: 'warn', actions_change: 'violet',
  'in force': 'warn', lifted: 'muted', expired: 'muted', rule: 'violet', phone: 'info',
};

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  loginMessage: null,
  returnTo: null,
  seq: 0,
  timer: null,
  ruleNames: null,
  // The what-if form and its last report, kept while the operator moves between pages.
  whatIf: { form: { rules_dir: '', since: '7d', until: '', limit: '', examples: '3' }, report: null, error: null, running: false },
  // The last replay of an event from its trace: { eventId, result }.
  replay: null,
};

// ---------------------------------------------------------------------------------------------
// DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.setAttribute('class', Array.isArray(value) ? value.filter(Boolean).join(' ') : value);
    } else if (key === 'value' && 'value' in el) {
      el.value = value;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const $ = (selector) => document.querySelector(selector);

function badge(status, label) {
  const key = String(status || 'unknown');
  return h('span', { class: ['badge', 'tone-' + (BADGE_TONE[key] || 'muted')] }, label || key);
}

function json(value) {
  return h('pre', { class: 'code' }, JSON.stringify(value, null, 2));
}

function shortHash(value) {
  const text = String(value || '');
  return text.length > 12 ? text.slice(0, 12) + '…' : text;
}

function telHref(phone) {
  const clean = String(phone || '').replace(/[^0-9+*#]/g, '');
  return clean ? 'tel:' + clean : null;
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many || one + 's'}`;
}

// ---------------------------------------------------------------------------------------------
// Time: the API gives RFC 3339 strings and unix milliseconds; both are shown in local time.

function toDate(value) {
  if (value === null || value === undefined || value === '') return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

const fmtTime = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const fmtDay = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
const fmtYear = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
const fmtFull = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'long' });
const fmtMinute = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const fmtRelative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });

function formatLocal(d) {
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  if (sameDay) return fmtTime.format(d);
  const day = d.getFullYear() === now.getFullYear() ? fmtDay.format(d) : fmtYear.format(d);
  return `${day}, ${fmtTime.format(d)}`;
}

function relative(d) {
  const seconds = Math.round((d.getTime() - Date.now()) / 1000);
  const abs = Math.abs(seconds);
  if (abs < 45) return fmtRelative.format(seconds, 'second');
  if (abs < 2700) return fmtRelative.format(Math.round(seconds / 60), 'minute');
  if (abs < 64800) return fmtRelative.format(Math.round(seconds / 3600), 'hour');
  return fmtRelative.format(Math.round(seconds / 86400), 'day');
}

function time(value, { rel = false, day = false } = {}) {
  const d = toDate(value);
  if (!d) return h('span', { class: 'muted' }, '—');
  const text = rel ? relative(d) : day ? `${fmtDay.format(d)}, ${fmtTime.format(d)}` : formatLocal(d);
  return h('time', { datetime: d.toISOString(), title: `${fmtFull.format(d)} (${relative(d)})` }, text);
}

function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  if (ms < 2 * 3600000) return `${Math.round(ms / 60000)} min`;
  if (ms < 2 * 86400000) return `${Math.round(ms / 3600000)} h`;
  return `${Math.round(ms / 86400000)} days`;
}

function datetimeLocalToMs(value) {
  const d = toDate(value);
  return d ? String(d.getTime()) : '';
}

function msToDatetimeLocal(ms) {
  if (!ms || !/^-?\d+$/.test(ms)) return '';
  const d = toDate(Number(ms));
  if (!d) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

// ---------------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, code, message, data) {
    super(message);
    this.status = status;
    this.code = code;
    // The whole JSON error body (`parameter` names the bad field of a 400).
    this.data = data || {};
  }
}

async function request(path, token, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'network', 'The Switchboard server could not be reached. Check your connection and try again.');
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!response.ok) {
    const message = (data && data.message) || `The server answered ${response.status} ${response.statusText}`.trim();
    throw new ApiError(response.status, (data && data.error) || 'http_' + response.status, message, data);
  }
  return data;
}

async function api(path, options) {
  try {
    return await request(path, state.token, options);
  } catch (e) {
    if (e.status === 401) {
      signOut('Your admin token was not accepted (401 Unauthorized): it may have been changed. Sign in again.');
      e.handled = true;
    }
    throw e;
  }
}

function signOut(message, tone = 'bad') {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.loginMessage = message ? { message, tone } : null;
  const { path } = parseHash();
  if (path !== '/login') state.returnTo = location.hash;
  location.hash = '#/login';
}

// ---------------------------------------------------------------------------------------------
// Feedback

function toast(message, tone = 'good') {
  const el = h('div', { class: ['toast', 'tone-' + tone], role: tone === 'bad' ? 'alert' : 'status', title: 'Click to dismiss' }, message);
  el.addEventListener('click', () => el.remove());
  $('#toasts').append(el);
  setTimeout(() => el.classList.add('leaving'), 4500);
  setTimeout(() => el.remove(), 5000);
}

function errorPanel(error, retry) {
  return h('div', { class: 'panel-error', role: 'alert' },
    h('strong', null, error.status ? `Error ${error.status}` : 'Error'),
    h('span', null, error.message),
    retry ? h('button', { type: 'button', class: 'btn btn-small', onclick: retry }, 'Try again') : null);
}

function empty(title, detail) {
  return h('div', { class: 'empty' }, h('strong', null, title), detail ? h('span', null, detail) : null);
}

// Runs an action from a button: disables it, reports success or the server's message.
async function act(button, work, success) {
  button.disabled = true;
  button.classList.add('busy');
  try {
    const result = await work();
    if (success) toast(typeof success === 'function' ? success(result) : success, 'good');
    return result;
  } catch (e) {
    if (!e.handled) toast(e.message, 'bad');
    return undefined;
  } finally {
    button.disabled = false;
    button.classList.remove('busy');
  }
}

// ---------------------------------------------------------------------------------------------
// Layout pieces

function pageHead(title, subtitle, ...actions) {
  return h('div', { class: 'page-head' },
    h('div', null, h('h1', null, title), subtitle ? h('p', { class: 'subtitle' }, subtitle) : null),
    actions.length ? h('div', { class: 'page-actions' }, actions) : null);
}

function card(title, body, { extra, cls } = {}) {
  return h('section', { class: ['card', cls] },
    title ? h('header', { class: 'card-head' }, h('h2', null, title), extra || null) : null,
    body);
}

// A table that becomes a list of cards on narrow screens (each cell labelled by its column).
function table(columns, rows, { rowClass, onRow } = {}) {
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'table' },
      h('thead', null, h('tr', null, columns.map((c) => h('th', { class: c.cls }, c.label)))),
      h('tbody', null, rows.map((row) => {
        const tr = h('tr', { class: rowClass ? rowClass(row) : null },
          columns.map((c) => h('td', { 'data-label': c.label, class: c.cls }, c.cell(row))));
        if (onRow) {
          tr.classList.add('clickable');
          tr.addEventListener('click', (ev) => {
            if (ev.target.closest('a, button, input, textarea, select')) return;
            onRow(row);
          });
        }
        return tr;
      }))));
}

function dl(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
}

function tabs(current, items) {
  return h('nav', { class: 'tabs', 'aria-label': 'Filter' }, items.map(([key, label, href]) =>
    h('a', { href, class: key === current ? 'active' : null, 'aria-current': key === current ? 'page' : null }, label)));
}

function refreshButton() {
  return h('button', { type: 'button', class: 'btn btn-ghost', onclick: () => route({ quiet: true }) }, 'Refresh');
}

// ---------------------------------------------------------------------------------------------
// Router

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query] = raw.split('?');
  return { path: path || '/', params: new URLSearchParams(query || '') };
}

function hashWith(path, params) {
  const entries = [...params.entries()].filter(([, v]) => v !== '' && v !== null && v !== undefined);
  const query = new URLSearchParams(entries).toString();
  return '#' + path + (query ? '?' + query : '');
}

const ROUTES = [
  [/^\/$/, 'overview', renderOverview],
  [/^\/events$/, 'events', renderEvents],
  [/^\/events\/(\d+)$/, 'events', renderEvent],
  [/^\/jobs$/, 'jobs', renderJobs],
  [/^\/jobs\/(\d+)$/, 'jobs', renderJob],
  [/^\/tasks$/, 'tasks', renderTasks],
  [/^\/rules$/, 'rules', renderRules],
  [/^\/rules\/what-if$/, 'rules', renderWhatIf],
  [/^\/mutes$/, 'mutes', renderMutes],
  [/^\/login$/, 'login', renderLogin],
];

// Renders the page the hash names. `quiet` re-renders in place (refresh) without a spinner.
async function route({ quiet = false } = {}) {
  clearTimeout(state.timer);
  const seq = ++state.seq;
  const { path, params } = parseHash();
  if (!state.token && path !== '/login') {
    state.returnTo = location.hash;
    location.hash = '#/login';
    return;
  }
  const found = ROUTES.map(([re, section, render]) => [path.match(re), section, render]).find(([m]) => m);
  const [match, section, render] = found || [null, null, renderNotFound];
  $('#topbar').hidden = section === 'login';
  document.body.classList.toggle('is-login', section === 'login');
  for (const a of document.querySelectorAll('#nav a')) {
    const active = a.dataset.section === section;
    a.classList.toggle('active', active);
    if (active) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    if (active) keepInView($('#nav'), a);
  }
  const main = $('#main');
  if (!quiet) {
    main.replaceChildren(h('div', { class: 'loading', 'aria-busy': 'true' }, h('span', { class: 'spinner' }), 'Loading…'));
    window.scrollTo(0, 0);
  }
  const ctx = {
    params, match, seq,
    current: () => seq === state.seq,
    mount(view) { if (seq === state.seq) main.replaceChildren(view); },
    // Re-renders later, unless the operator is typing or has a form open (then it waits).
    refreshIn(ms) {
      if (seq !== state.seq) return;
      state.timer = setTimeout(() => {
        const active = document.activeElement;
        const busy = main.querySelector('.inline-form') || (active && main.contains(active) && active.matches('input, textarea, select'));
        if (busy) ctx.refreshIn(ms); else route({ quiet: true });
      }, ms);
    },
  };
  try {
    await render(ctx);
  } catch (e) {
    if (e.handled || !ctx.current()) return;
    ctx.mount(h('div', { class: 'page' }, errorPanel(e, () => route())));
  }
}

// On a phone the nav scrolls sideways: show the current page's link.
function keepInView(nav, link) {
  const box = nav.getBoundingClientRect();
  const at = link.getBoundingClientRect();
  if (at.left < box.left || at.right > box.right) nav.scrollLeft += at.left - box.left - 8;
}

function renderNotFound(ctx) {
  ctx.mount(h('div', { class: 'page' }, empty('Page not found', 'The address does not name a dashboard page.'),
    h('p', { class: 'center' }, h('a', { href: '#/' }, 'Back to the overview'))));
}

// ---------------------------------------------------------------------------------------------
// Login

function renderLogin(ctx) {
  const input = h('input', {
    type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true,
    placeholder: 'Admin token', spellcheck: 'false', 'aria-describedby': 'login-error',
  });
  const notice = state.loginMessage;
  const error = h('p', { class: ['login-message', 'tone-' + (notice ? notice.tone : 'bad')], id: 'login-error', role: 'alert' },
    notice ? notice.message : '');
  error.hidden = !notice;
  const button = h('button', { type: 'submit', class: 'btn btn-primary btn-block' }, 'Sign in');
  const form = h('form', { class: 'login-card', novalidate: true },
    h('div', { class: 'login-brand' }, h('img', { src: '/assets/icon.svg', alt: '', width: 44, height: 44 }),
      h('div', null, h('h1', null, 'Switchboard'), h('p', null, 'Operator dashboard'))),
    h('label', { for: 'token' }, 'Admin token'),
    input,
    h('p', { class: 'hint' }, 'The token set as admin_token in the service configuration. It is kept only for this browser tab.'),
    error,
    button);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    const show = (message) => {
      error.textContent = message;
      error.className = 'login-message tone-bad';
      error.hidden = false;
      input.focus();
      input.select();
    };
    if (!token) return show('Enter the admin token.');
    button.disabled = true;
    button.textContent = 'Checking…';
    try {
      await request('/v1/rules', token);
      sessionStorage.setItem(TOKEN_KEY, token);
      state.token = token;
      state.loginMessage = null;
      const next = state.returnTo && !state.returnTo.startsWith('#/login') ? state.returnTo : '#/';
      state.returnTo = null;
      location.hash = next;
    } catch (e) {
      show(e.status === 401 ? 'That admin token was not accepted. Check it and try again.' : e.message);
    } finally {
      button.disabled = false;
      button.textContent = 'Sign in';
    }
  });
  ctx.mount(h('div', { class: 'login-page' }, form));
  input.focus();
}

// ---------------------------------------------------------------------------------------------
// Overview

async function renderOverview(ctx) {
  const [o, inst, quarantine] = await Promise.all([api('/v1/overview?minutes=60'), instances(),
    api('/v1/quarantine').catch((e) => e)]);
  const jobs = o.jobs || {};
  const failing = (jobs.dead || 0) + (jobs.retrying || 0);
  const matchedShare = o.events ? Math.round((o.matched_events / o.events) * 100) : 0;
  const rules = o.rules || {};
  const stat = (label, value, note, tone, href, id) => h(href ? 'a' : 'div',
    { class: ['stat', tone ? 'tone-' + tone : null], href, 'data-stat': id },
    h('span', { class: 'stat-label' }, label),
    h('span', { class: 'stat-value' }, String(value)),
    h('span', { class: 'stat-note' }, note));
  const stats = h('div', { class: 'stats' },
    stat('Events', o.events, `in the last ${o.minutes} min`, 'primary', '#/events', 'events'),
    stat('Matched', o.matched_events, o.events ? `${matchedShare}% of events matched a rule` : 'no events yet', o.matched_events ? 'good' : null, null, 'matched'),
    stat('Failing jobs', failing, `${jobs.dead || 0} dead · ${jobs.retrying || 0} retrying`, failing ? 'bad' : 'good', '#/jobs?status=' + (jobs.dead ? 'dead' : 'retrying'), 'failing'),
    stat('Open callbacks', o.open_callback_tasks, 'waiting for an agent', o.open_callback_tasks ? 'info' : null, '#/tasks', 'callbacks'),
    stat('Rule errors', o.rule_errors + (rules.broken || 0),
      `${plural(o.rule_errors, 'evaluation error')} · ${plural(rules.broken || 0, 'broken file')}`,
      o.rule_errors || rules.broken ? 'bad' : 'good', '#/rules', 'rule-errors'));

  // `muted` (a mute held the job back) shows only when there are such jobs.
  const shown = JOB_STATUSES.filter((st) => st !== 'muted' || jobs.muted);
  const jobRow = h('div', { class: 'job-counts' }, shown.map((st) =>
    h('a', { class: 'job-count', href: '#/jobs?status=' + st, 'data-count': st },
      badge(st), h('span', { class: 'job-count-n' }, String(jobs[st] || 0)))));

  const view = h('div', { class: 'page' },
    pageHead('Overview', [`Last ${o.minutes} minutes · updated `, time(o.now)], refreshButton()),
    instancesBanner(inst),
    stats,
    h('div', { class: 'grid-2' },
      card('Events per minute', chart(o), { cls: 'span-2', extra: h('span', { class: 'muted small' }, `${o.events} in ${o.minutes} min`) }),
      card('Jobs in this window', jobRow, { extra: h('a', { href: '#/jobs', class: 'small' }, 'All jobs →') }),
      card('Rules', dl([
        ['Rule files', String(rules.count ?? '—')],
        ['Broken files', rules.broken ? badge('error', String(rules.broken)) : badge('ok', 'none')],
        ['Version', h('code', { title: rules.version || '' }, shortHash(rules.version))],
      ]), { extra: h('a', { href: '#/rules', class: 'small' }, 'Rule status →') }),
      card('Delivery queue', queueHealth(o), { extra: h('a', { href: '#/jobs?status=dead', class: 'small' }, 'Dead jobs →') }),
      card('Quarantined events', quarantineList(o, quarantine), { cls: o.quarantined_events ? 'card-warn' : null }),
      card('Instances', instancesList(inst), {
        extra: inst instanceof Error ? null : h('span', { class: 'muted small' }, plural(inst.instances.length, 'running instance')),
      })));
  ctx.mount(view);
  ctx.refreshIn(15000);
}

// Events that failed to load or process too many times and wait for an operator (newest first).
function quarantineList(o, quarantine) {
  const count = o.quarantined_events || 0;
  const head = h('div', { class: ['health', count ? 'tone-bad' : 'tone-good'], 'data-health': 'quarantined' },
    h('span', { class: 'health-value' }, String(count)),
    h('span', { class: 'health-label' }, count ? 'events kept out of processing: open one to see why, then retry it' : 'every event could be processed'));
  if (!count || quarantine instanceof Error) return head;
  const shown = quarantine.events.slice(0, 5);
  return h('div', { class: 'quarantine' }, head,
    h('ul', { class: 'action-list' }, shown.map((q) => h('li', { 'data-quarantined': q.id },
      h('a', { href: '#/events/' + q.id, class: 'mono' }, '#' + q.id), ' ',
      h('span', { class: 'muted small' }, `after ${plural(q.failures, 'failure')}: `),
      h('span', { class: 'small' }, q.last_error || '')))),
    count > shown.length ? h('p', { class: 'muted small' }, `and ${count - shown.length} more`) : null);
}

// `GET /v1/instances`, or the error (the pages that show it still render without it).
async function instances() {
  try {
    return await api('/v1/instances');
  } catch (e) {
    if (e.handled) throw e;
    return e;
  }
}

// A warning when running instances evaluate with different rule sets, naming who runs what.
function instancesBanner(inst) {
  if (!inst || inst instanceof Error || inst.agree) return null;
  const versions = Object.entries(inst.ruleset_versions || {});
  return h('div', { class: 'banner tone-bad', role: 'alert', id: 'instances-disagree' },
    h('strong', null, 'Instances run different rule sets'),
    h('span', null, `Events are evaluated differently depending on which instance picks them up. Make every instance load the same rules directory.`),
    h('ul', null, versions.map(([version, ids]) => h('li', null,
      h('code', { title: version }, shortHash(version)), ': ',
      ids.map((id, i) => [i ? ', ' : '', h('span', { class: 'mono' }, id), id === inst.this_instance ? ' (this one)' : ''])))));
}

function instancesList(inst) {
  if (inst instanceof Error) return h('p', { class: 'small bad' }, 'Instances could not be read: ' + inst.message);
  if (!inst.instances.length) return empty('No instance has reported yet', 'Instances report every 5 seconds.');
  return h('ul', { class: 'instances' }, inst.instances.map((i) => h('li', { class: 'instance', 'data-instance': i.id },
    h('div', { class: 'instance-head' },
      h('strong', { class: 'mono' }, i.id),
      i.id === inst.this_instance ? h('span', { class: 'badge tone-info' }, 'this instance') : null),
    h('div', { class: 'instance-meta small' },
      h('span', null, 'listens on ', h('code', null, i.listen || '—')),
      h('span', { class: inst.agree ? null : 'version-differs', title: inst.agree ? null : 'Not every instance runs this rule set' },
        'rules ', h('code', { title: i.ruleset_version }, shortHash(i.ruleset_version))),
      i.version ? h('span', null, 'v' + i.version) : null,
      h('span', { class: 'muted' }, 'started ', time(i.started_at, { rel: true }), ' · seen ', time(i.seen_at, { rel: true }))))));
}

// How far behind delivery is: jobs due now, how long the oldest has waited, dead jobs overall.
function queueHealth(o) {
  const age = o.oldest_due_age_ms;
  const lagging = age !== null && age !== undefined && age > 60000;
  const status = !o.due_jobs ? 'Nothing is waiting: delivery keeps up.'
    : lagging ? `Delivery is behind: the oldest due job has waited ${duration(age)}.`
      : `${plural(o.due_jobs, 'job')} due; the workers are on it.`;
  return h('div', null, h('div', { class: 'queue-health' },
    h('div', { class: ['health', o.due_jobs ? (lagging ? 'tone-warn' : 'tone-info') : 'tone-good'], 'data-health': 'due' },
      h('span', { class: 'health-value' }, String(o.due_jobs ?? '—')),
      h('span', { class: 'health-label' }, 'jobs due now')),
    h('div', { class: ['health', lagging ? 'tone-warn' : 'tone-good'], 'data-health': 'oldest' },
      h('span', { class: 'health-value' }, age === null || age === undefined ? '—' : duration(age)),
      h('span', { class: 'health-label' }, 'oldest due job waiting')),
    h('a', { class: ['health', o.dead_jobs_total ? 'tone-bad' : 'tone-good'], href: '#/jobs?status=dead', 'data-health': 'dead' },
      h('span', { class: 'health-value' }, String(o.dead_jobs_total ?? '—')),
      h('span', { class: 'health-label' }, 'dead jobs (all time)'))),
    h('p', { class: ['small', 'queue-status', lagging ? 'tone-warn' : null] }, status));
}

// Bars for each minute of the window (minutes without events are empty), newest on the right.
function chart(o) {
  const minute = 60000;
  const count = Math.max(1, o.minutes || 60);
  const last = Math.floor(o.now / minute) * minute;
  const first = last - (count - 1) * minute;
  const byMinute = new Map((o.events_per_minute || []).map((m) => [m.minute, m.events]));
  const buckets = [];
  for (let t = first; t <= last; t += minute) buckets.push({ t, n: byMinute.get(t) || 0 });
  const max = Math.max(1, ...buckets.map((b) => b.n));
  const top = niceCeil(max);
  const W = 600, H = 150, gap = 2;
  const bw = W / buckets.length;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', class: 'chart-svg', role: 'img',
    'aria-label': `Events per minute over the last ${count} minutes; peak ${max}` },
  [0.25, 0.5, 0.75].map((f) => s('line', { x1: 0, x2: W, y1: H - H * f, y2: H - H * f, class: 'chart-grid' })),
  buckets.map((b, i) => {
    const bh = b.n ? Math.max(2, (b.n / top) * (H - 4)) : 0;
    return s('rect', { x: i * bw + gap / 2, y: H - bh, width: Math.max(1, bw - gap), height: bh, rx: 1.5, class: 'chart-bar' },
      s('title', null, `${fmtMinute.format(new Date(b.t))}: ${plural(b.n, 'event')}`));
  }),
  s('line', { x1: 0, x2: W, y1: H - 0.5, y2: H - 0.5, class: 'chart-axis' }));
  const ticks = [0, 15, 30, 45, count - 1].filter((i) => i < buckets.length);
  return h('div', { class: 'chart' },
    h('div', { class: 'chart-y' }, h('span', null, String(top)), h('span', null, String(top / 2)), h('span', null, '0')),
    h('div', { class: 'chart-plot' }, svg,
      h('div', { class: 'chart-x' }, ticks.map((i) => h('span', null, fmtMinute.format(new Date(buckets[i].t)))))));
}

// A readable top for the y axis whose half is readable too: 4, 6, 8, 10, 20, 40, 60, …
function niceCeil(n) {
  if (n <= 4) return 4;
  const pow = 10 ** Math.floor(Math.log10(n));
  for (const step of [2, 4, 6, 8, 10]) if (step * pow >= n) return step * pow;
  return 10 * pow;
}

// ---------------------------------------------------------------------------------------------
// Events

function outcomeBadge(outcome) {
  if (!outcome) return h('span', { class: 'muted' }, '—');
  const tone = /answered$/.test(outcome) ? 'good' : /queue_|no_answer|rejected|offline|busy/.test(outcome) ? 'warn' : 'muted';
  return h('span', { class: ['badge', 'tone-' + tone] }, OUTCOME_LABEL[outcome] || outcome);
}

async function ruleNames() {
  if (state.ruleNames) return state.ruleNames;
  try {
    const rules = await api('/v1/rules');
    state.ruleNames = rules.rules.map((r) => r.name);
  } catch (e) {
    if (e.handled) throw e;
    state.ruleNames = [];
  }
  return state.ruleNames;
}

async function renderEvents(ctx) {
  const p = ctx.params;
  const query = new URLSearchParams();
  const copy = [['phone', 'customer_phone'], ['call_id', 'call_id'], ['outcome', 'outcome'], ['rule', 'rule'],
    ['since', 'since'], ['until', 'until'], ['before', 'before']];
  for (const [from, to] of copy) if (p.get(from)) query.set(to, p.get(from));
  query.set('limit', '50');
  const [names, page] = await Promise.all([ruleNames(), api('/v1/events?' + query).catch((e) => e)]);

  const field = (label, control) => h('label', { class: 'field' }, h('span', null, label), control);
  const input = (name, attrs) => h('input', Object.assign({ name, value: p.get(name) || '' }, attrs));
  const form = h('form', { class: 'filters', role: 'search' },
    field('Phone', input('phone', { type: 'search', inputmode: 'tel', placeholder: 'e.g. 13800138000' })),
    field('Call ID', input('call_id', { type: 'search', placeholder: 'Udesk call_id' })),
    field('Outcome', h('select', { name: 'outcome' }, h('option', { value: '' }, 'Any outcome'),
      OUTCOMES.map(([v, label]) => h('option', { value: v, selected: p.get('outcome') === v }, label)))),
    field('Matched rule', h('select', { name: 'rule' }, h('option', { value: '' }, 'Any or none'),
      [...new Set([...names, p.get('rule')].filter(Boolean))].map((n) => h('option', { value: n, selected: p.get('rule') === n }, n)))),
    field('From', h('input', { name: 'since', type: 'datetime-local', value: msToDatetimeLocal(p.get('since')) })),
    field('To', h('input', { name: 'until', type: 'datetime-local', value: msToDatetimeLocal(p.get('until')) })),
    h('div', { class: 'filter-actions' },
      h('button', { type: 'submit', class: 'btn btn-primary' }, 'Search'),
      h('a', { class: 'btn btn-ghost', href: '#/events' }, 'Reset')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const next = new URLSearchParams();
    for (const key of ['phone', 'call_id', 'outcome', 'rule']) next.set(key, String(data.get(key) || '').trim());
    next.set('since', datetimeLocalToMs(data.get('since')));
    next.set('until', datetimeLocalToMs(data.get('until')));
    const target = hashWith('/events', next);
    if (target === location.hash) route({ quiet: true }); else location.hash = target;
  });

  let results;
  if (page instanceof Error) {
    if (page.handled) throw page;
    results = errorPanel(page);
  } else if (!page.events.length && !(page.unreadable || []).length) {
    results = empty('No events found', p.toString() ? 'Nothing matches these filters.' : 'No notification has been received yet.');
  } else {
    const unreadable = page.unreadable || [];
    results = h('div', null,
      unreadable.length ? h('div', { class: 'banner tone-warn', 'data-unreadable': unreadable.length },
        h('strong', null, `${plural(unreadable.length, 'event')} of this page cannot be read back and are left out`),
        h('span', null, unreadable.map((u, i) => [i ? ', ' : '', h('a', { href: '#/events/' + u.id, class: 'mono', title: u.reason }, '#' + u.id)]))) : null,
      table([
        { label: 'Event', cls: 'nowrap', cell: (e) => h('a', { href: '#/events/' + e.id, class: 'mono' }, '#' + e.id) },
        { label: 'Received', cls: 'nowrap', cell: (e) => time(e.received_at) },
        { label: 'Phone', cls: 'nowrap', cell: (e) => e.event.customer_phone || h('span', { class: 'muted' }, '—') },
        { label: 'Customer', cell: (e) => e.event.nick_name || h('span', { class: 'muted' }, '—') },
        { label: 'Outcome', cell: (e) => outcomeBadge(e.event.outcome) },
        { label: 'Call ID', cls: 'truncate', cell: (e) => e.event.call_id ? h('code', { title: e.event.call_id }, e.event.call_id) : h('span', { class: 'muted' }, '—') },
        { label: 'State', cell: (e) => [badge(e.state), e.warnings.length ? h('span', { class: 'badge tone-warn', title: 'Fields that could not be decoded' }, plural(e.warnings.length, 'warning')) : null] },
      ], page.events, { onRow: (e) => { location.hash = '#/events/' + e.id; } }),
      pager(p, '/events', page.next_before));
  }
  ctx.mount(h('div', { class: 'page' },
    pageHead('Events', 'Notifications received from Udesk, newest first', refreshButton()),
    card(null, form, { cls: 'card-filters' }),
    card(null, results, { cls: 'card-flush' })));
}

// Links to the newest page and the next older one, when there are such pages.
function pager(params, path, nextBefore) {
  if (!params.get('before') && !nextBefore) return null;
  return h('div', { class: 'pager' },
    params.get('before') ? h('a', { class: 'btn btn-ghost', href: hashWith(path, withParam(params, 'before', '')) }, '← Newest') : h('span'),
    nextBefore ? h('a', { class: 'btn btn-ghost', href: hashWith(path, withParam(params, 'before', nextBefore)) }, 'Older →') : null);
}

function withParam(params, key, value) {
  const next = new URLSearchParams(params);
  next.set(key, value);
  return next;
}

async function renderEvent(ctx) {
  const id = ctx.match[1];
  const ev = await api('/v1/events/' + id);
  const jobs = ev.jobs || [];
  const details = await Promise.all(jobs.map((j) => api('/v1/jobs/' + j.id).catch((e) => e)));
  const e = ev.event || {};
  const record = ev.evaluation && ev.evaluation.record;

  const summary = dl([
    ['Customer phone', e.customer_phone ? h('a', { href: telHref(e.customer_phone) }, e.customer_phone) : '—'],
    ['Customer', e.nick_name || '—'],
    ['Outcome', [outcomeBadge(e.outcome), e.call_result ? h('span', { class: 'muted' }, ' ' + e.call_result) : null]],
    ['Call ID', e.call_id ? h('code', null, e.call_id) : '—'],
    ['Workflow', e.workflow || '—'],
    ['Queue time', e.queue_time !== undefined && e.queue_time !== null ? `${e.queue_time} s` : '—'],
    ['Received', time(ev.received_at)],
    ['Processed', ev.processed_at ? time(ev.processed_at) : badge(ev.state)],
    ev.failures ? ['Failed attempts', String(ev.failures)] : null,
    ['Source', ev.source_addr || '—'],
    ['Content type', ev.content_type || '—'],
    ['Dedupe key', h('code', { title: ev.dedupe_key }, shortHash(ev.dedupe_key))],
  ]);

  const replay = replayControls(ev.id);
  const view = h('div', { class: 'page' },
    h('a', { href: '#/events', class: 'back' }, '← Events'),
    pageHead(`Event #${ev.id}`, [badge(ev.state), ' ', outcomeBadge(e.outcome), ' received ', time(ev.received_at), ' (', time(ev.received_at, { rel: true }), ')'],
      replay.buttons, refreshButton()),
    replay.area,
    processingProblem(ev),
    h('div', { class: 'grid-2' },
      card('Call', summary),
      card('Rule verdicts', verdicts(ev, record, jobs), {
        extra: ev.evaluation && ev.evaluation.ruleset_version
          ? h('span', { class: 'muted small' }, 'rule set ', h('code', { title: ev.evaluation.ruleset_version }, shortHash(ev.evaluation.ruleset_version)))
          : null,
      })),
    card(`Jobs (${jobs.length})`, jobs.length ? h('div', { class: 'job-list' }, jobs.map((j, i) => jobBlock(j, details[i])))
      : empty('No jobs', 'No rule asked for an action on this event.')),
    ev.warnings.length ? card(`Warnings (${ev.warnings.length})`, table([
      { label: 'Field', cell: (w) => h('code', null, w.field) },
      { label: 'Problem', cell: (w) => w.message },
      { label: 'Value sent', cell: (w) => w.value === undefined ? '—' : h('code', null, JSON.stringify(w.value)) },
    ], ev.warnings), { cls: 'card-warn' }) : null,
    card('Decoded fields', fieldsTable(e)),
    card('Raw push', rawBody(ev.raw_body)));
  ctx.mount(view);
  if (ev.state !== 'processed' || jobs.some((j) => j.status === 'pending' || j.status === 'retrying')) ctx.refreshIn(3000);
}

// Why an event is not processed (yet): a stored row that cannot be read back, failed attempts,
// quarantine; a quarantined event can be put back in the queue from here.
function processingProblem(ev) {
  if (!ev.unreadable && !ev.last_error && ev.state !== 'quarantined') return null;
  const quarantined = ev.state === 'quarantined';
  const retry = quarantined ? h('button', { type: 'button', class: 'btn btn-small', 'data-action': 'retry-event',
    onclick: async (e) => {
      const done = await act(e.currentTarget, () => api(`/v1/events/${ev.id}/retry`, { method: 'POST' }),
        `Event #${ev.id} is back in the processing queue`);
      if (done) route({ quiet: true });
    } }, 'Retry processing') : null;
  return h('div', { class: ['banner', quarantined ? 'tone-bad' : 'tone-warn'], role: 'alert', 'data-problem': ev.state },
    h('strong', null, quarantined ? 'Quarantined: this event is kept out of processing' : 'Processing this event failed; it will be retried'),
    ev.unreadable ? h('span', null, 'Its stored view cannot be read back: ', h('code', null, ev.unreadable), '. The raw push is below.') : null,
    ev.last_error ? h('span', null, `Last error${ev.failures ? ` (attempt ${ev.failures})` : ''}: `, h('code', null, ev.last_error)) : null,
    quarantined ? h('span', null, 'Quarantined ', time(ev.quarantined_at), '. Fix the cause, then retry it; the rest of the queue was not held up.') : null,
    retry ? h('div', { class: 'actions' }, retry) : null);
}

// Replay this event against the rules running now: a dry run reports what they would do; a real
// run (after a confirm step) queues their actions as new jobs, which then show in the trace.
function replayControls(id) {
  const area = h('div', { class: 'replay-area', id: 'replay-area' });
  const paint = (confirmForm) => {
    const last = state.replay && state.replay.eventId === id ? state.replay.result : null;
    area.replaceChildren(...[confirmForm, last ? replayResult(last, () => { state.replay = null; paint(); }) : null].filter(Boolean));
  };
  const run = async (button, dryRun) => {
    const result = await act(button, () => api(`/v1/events/${id}/replay`, { method: 'POST', body: { dry_run: dryRun } }),
      dryRun ? null : (r) => `Event #${id} replayed: ${plural(r.queued, 'job')} queued`);
    if (!result) return;
    state.replay = { eventId: id, result };
    paint();
    if (!dryRun) route({ quiet: true });
  };
  const dry = h('button', { type: 'button', class: 'btn', 'data-action': 'dry-run', title: 'Evaluate this event against the current rules; nothing is queued',
    onclick: (ev) => run(ev.currentTarget, true) }, 'Dry run against current rules');
  const real = h('button', { type: 'button', class: 'btn btn-danger-ghost', 'data-action': 'replay',
    onclick: () => {
      const yes = h('button', { type: 'button', class: 'btn btn-danger btn-small', 'data-action': 'confirm-replay' }, 'Replay for real');
      const form = h('div', { class: 'inline-form confirm', role: 'alertdialog', 'aria-label': 'Confirm the replay' },
        h('p', null, h('strong', null, `Replay event #${id} for real?`), ' The rules running now evaluate it again and every action they ask for is queued as a new job: emails are sent and webhooks posted again, callback tasks opened again. Run a dry run first to see what that would be.'),
        h('div', { class: 'actions' }, yes,
          h('button', { type: 'button', class: 'btn btn-ghost btn-small', onclick: () => paint() }, 'Cancel')));
      yes.addEventListener('click', async () => {
        await run(yes, false);
        if (form.isConnected) paint();
      });
      paint(form);
      yes.focus();
    } }, 'Replay for real…');
  paint();
  return { buttons: [dry, real], area };
}

function replayResult(r, close) {
  const evaluation = r.evaluation || {};
  const verdicts = evaluation.verdicts || [];
  const matched = verdicts.filter((v) => v.matched);
  const failed = verdicts.filter((v) => v.error);
  const actions = r.actions || [];
  return card(r.dry_run ? 'Dry run against the current rules' : 'Replayed for real', h('div', { class: 'replay-result', 'data-replay': r.dry_run ? 'dry-run' : 'real' },
    r.dry_run ? h('p', { class: 'muted small' }, 'Nothing was queued: this is what the rules running now would do with this event.')
      : h('p', { class: 'notice tone-good', 'data-queued': r.queued }, `Run `, h('code', null, r.run || '—'), ` queued ${plural(r.queued, 'job')}; they appear under Jobs below.`),
    dl([
      ['Matched rules', matched.length ? h('span', { class: 'chips' }, matched.map((v) => h('span', { class: 'chip chip-good', 'data-matched': v.rule }, v.rule))) : h('span', { class: 'muted' }, 'none')],
      failed.length ? ['Failed', h('ul', { class: 'action-list' }, failed.map((v) => h('li', null, h('strong', null, v.rule), ': ', h('span', { class: 'bad' }, v.error))))] : null,
      ['Actions', actions.length ? h('ul', { class: 'action-list' }, actions.map((a) => h('li', { title: JSON.stringify(a.action, null, 2) },
        h('code', null, a.kind), actionTarget(Object.assign({ kind: a.kind }, a.action || {})) ? [' ', h('span', { class: 'muted' }, actionTarget(Object.assign({ kind: a.kind }, a.action || {})))] : null,
        h('span', { class: 'muted' }, ' from '), a.rule))) : h('span', { class: 'muted' }, 'none')],
      ['Evaluated', [`${plural(evaluation.evaluated || 0, 'rule')} of version `, h('code', { title: evaluation.ruleset_version }, shortHash(evaluation.ruleset_version)), ` in ${evaluation.elapsed_us ?? '?'} µs`]],
    ])), { cls: 'card-replay', extra: h('button', { type: 'button', class: 'btn btn-ghost btn-small', onclick: close }, 'Close') });
}

function verdicts(ev, record, jobs) {
  if (!record) {
    return empty(ev.state === 'processed' ? 'No evaluation record' : 'Not evaluated yet',
      ev.state === 'processed' ? 'The event was processed without a record.' : 'The processor has not picked this event up yet.');
  }
  const list = record.verdicts || [];
  const rows = list.map((v) => {
    const ruleJobs = jobs.filter((j) => j.rule === v.rule);
    let verdict = 'not matched';
    if (v.error) verdict = 'error';
    else if (v.matched && ruleJobs.length && ruleJobs.every((j) => j.status === 'suppressed')) verdict = 'throttled';
    else if (v.matched) verdict = 'matched';
    return { v, verdict, ruleJobs };
  });
  const others = Math.max(0, (record.evaluated || 0) - list.length);
  return h('div', null,
    rows.length ? h('ul', { class: 'verdicts' }, rows.map(({ v, verdict, ruleJobs }) =>
      h('li', { class: 'verdict', 'data-verdict': verdict },
        h('div', { class: 'verdict-head' }, badge(verdict), h('strong', null, v.rule), h('span', { class: 'muted small mono' }, v.file)),
        v.error ? h('p', { class: 'verdict-error' }, v.error) : null,
        (v.actions || []).length ? h('p', { class: 'small' }, 'Actions: ', v.actions.map((a, i) => [i ? ', ' : '', h('code', null, a.kind || 'action')])) : null,
        v.throttle ? h('p', { class: 'small muted' }, `Throttled per key “${v.throttle.key}” for ${duration(v.throttle.window_ms)}`,
          verdict === 'throttled' && ruleJobs[0] && ruleJobs[0].note ? ` — ${ruleJobs[0].note}` : '') : null))) : null,
    h('p', { class: 'muted small' },
      others ? `${plural(others, 'other rule')} ran and did not match. ` : (rows.length ? '' : 'No rule matched. '),
      `${plural(record.evaluated || 0, 'rule')} evaluated in ${record.elapsed_us ?? '?'} µs.`));
}

function jobBlock(job, detail) {
  const attempts = detail && !(detail instanceof Error) ? detail.attempt_log : null;
  return h('article', { class: 'job', 'data-job': job.id, 'data-status': job.status },
    h('div', { class: 'job-head' },
      badge(job.status),
      h('a', { href: '#/jobs/' + job.id, class: 'mono' }, `Job #${job.id}`),
      h('span', null, h('code', null, job.kind), ' from ', h('strong', null, job.rule)),
      replayRun(job) ? h('span', { class: 'badge tone-violet', title: `Queued by the replay run ${replayRun(job)}`, 'data-replayed': 'true' }, 'replay') : null,
      h('span', { class: 'muted small job-meta' }, plural(job.attempts, 'attempt'), ' · created ', time(job.created_at))),
    job.note ? h('p', { class: 'small muted' }, job.note) : null,
    attempts && attempts.length ? attemptsTable(attempts) : null,
    detail instanceof Error ? h('p', { class: 'small bad' }, 'Attempts could not be read: ' + detail.message) : null);
}

// The replay run that queued a job (its key ends with the run id), or null.
function replayRun(job) {
  const m = /(replay-\d+)$/.exec(job.idempotency_key || '');
  return m ? m[1] : null;
}

function attemptsTable(attempts) {
  return table([
    { label: '#', cls: 'nowrap', cell: (a) => String(a.attempt) },
    { label: 'Started', cls: 'nowrap', cell: (a) => time(a.started_at) },
    { label: 'Took', cls: 'nowrap', cell: (a) => duration(a.duration_ms) },
    { label: 'Outcome', cell: (a) => badge(a.outcome) },
    { label: 'Code', cell: (a) => a.code === null || a.code === undefined ? '—' : String(a.code) },
    { label: 'Detail', cell: (a) => a.detail || h('span', { class: 'muted' }, '—') },
  ], attempts);
}

function fieldsTable(e) {
  const rows = Object.entries(e).filter(([, v]) => v !== null && v !== undefined && !(Array.isArray(v) && !v.length));
  if (!rows.length) return empty('No decoded fields');
  return h('dl', { class: 'facts facts-wide' }, rows.map(([k, v]) => [
    h('dt', null, h('code', null, k)),
    h('dd', null, typeof v === 'object' ? h('code', { class: 'wrap' }, JSON.stringify(v)) : String(v)),
  ]));
}

function rawBody(raw) {
  if (raw === undefined || raw === null) return empty('No body stored');
  let pretty = null;
  try { pretty = JSON.stringify(JSON.parse(raw), null, 2); } catch (e) { pretty = null; }
  const pre = h('pre', { class: 'code' }, pretty || raw);
  if (!pretty || pretty === raw) return pre;
  let showingRaw = false;
  const toggle = h('button', { type: 'button', class: 'btn btn-ghost btn-small' }, 'Show bytes as received');
  toggle.addEventListener('click', () => {
    showingRaw = !showingRaw;
    pre.textContent = showingRaw ? raw : pretty;
    toggle.textContent = showingRaw ? 'Show formatted' : 'Show bytes as received';
  });
  return h('div', null, h('div', { class: 'toolbar' }, toggle), pre);
}

// ---------------------------------------------------------------------------------------------
// Jobs

function jobActions(job, after, inTable = true) {
  const buttons = [];
  if (job.status === 'dead') {
    buttons.push(h('button', {
      type: 'button', class: 'btn btn-primary btn-small', 'data-action': 'retry',
      onclick: (ev) => act(ev.currentTarget, () => api(`/v1/jobs/${job.id}/retry`, { method: 'POST' }),
        `Job #${job.id} queued for another attempt`).then((r) => r && after(r)),
    }, 'Retry'));
  }
  if (['pending', 'retrying', 'dead'].includes(job.status)) {
    buttons.push(h('button', {
      type: 'button', class: 'btn btn-danger-ghost btn-small', 'data-action': 'cancel',
      onclick: (ev) => act(ev.currentTarget, () => api(`/v1/jobs/${job.id}/cancel`, { method: 'POST', body: { note: 'cancelled from the dashboard' } }),
        `Job #${job.id} cancelled`).then((r) => r && after(r)),
    }, 'Cancel'));
  }
  if (buttons.length) return h('div', { class: 'actions' }, buttons);
  return inTable ? h('span', { class: 'muted' }, '—') : null;
}

async function renderJobs(ctx) {
  const status = ctx.params.get('status') || '';
  const query = new URLSearchParams({ limit: '50' });
  if (status) query.set('status', status);
  if (ctx.params.get('before')) query.set('before', ctx.params.get('before'));
  const page = await api('/v1/jobs?' + query);
  const refresh = () => route({ quiet: true });
  const list = page.jobs.length ? h('div', null, table([
    { label: 'Job', cls: 'nowrap', cell: (j) => h('a', { href: '#/jobs/' + j.id, class: 'mono' }, '#' + j.id) },
    { label: 'Status', cell: (j) => badge(j.status) },
    { label: 'Kind', cell: (j) => h('code', null, j.kind) },
    { label: 'Rule', cell: (j) => j.rule },
    { label: 'Event', cls: 'nowrap', cell: (j) => h('a', { href: '#/events/' + j.event_id, class: 'mono' }, '#' + j.event_id) },
    { label: 'Attempts', cell: (j) => String(j.attempts) },
    { label: 'Created', cls: 'nowrap', cell: (j) => time(j.created_at) },
    { label: 'Next / finished', cls: 'nowrap', cell: (j) => j.finished_at ? time(j.finished_at) : (['pending', 'retrying'].includes(j.status) ? time(j.next_attempt_at, { rel: true }) : '—') },
    { label: 'Note', cls: 'note', cell: (j) => j.note || '' },
    { label: '', cls: 'actions-cell', cell: (j) => jobActions(j, refresh) },
  ], page.jobs, { onRow: (j) => { location.hash = '#/jobs/' + j.id; } }),
  pager(ctx.params, '/jobs', page.next_before))
    : empty(status ? `No ${status} jobs` : 'No jobs', status === 'dead' ? 'Nothing has failed for good. 🎉' : null);
  ctx.mount(h('div', { class: 'page' },
    pageHead('Jobs', 'Actions the rules asked for: webhooks, emails and callback tasks', refreshButton()),
    tabs(status, [['', 'All', '#/jobs'], ...JOB_STATUSES.map((st) => [st, st[0].toUpperCase() + st.slice(1), '#/jobs?status=' + st])]),
    card(null, list, { cls: 'card-flush' })));
  if (page.jobs.some((j) => j.status === 'pending' || j.status === 'retrying')) ctx.refreshIn(5000);
}

async function renderJob(ctx) {
  const job = await api('/v1/jobs/' + ctx.match[1]);
  const refresh = () => route({ quiet: true });
  const moving = job.status === 'pending' || job.status === 'retrying';
  ctx.mount(h('div', { class: 'page' },
    h('a', { href: '#/jobs', class: 'back' }, '← Jobs'),
    pageHead(`Job #${job.id}`, [badge(job.status), ' ', h('code', null, job.kind), ' from rule ', h('strong', null, job.rule)],
      jobActions(job, refresh, false), refreshButton()),
    moving ? h('p', { class: 'notice' }, h('span', { class: 'spinner' }), 'Waiting for the delivery worker; this page updates by itself.') : null,
    h('div', { class: 'grid-2' },
      card('Job', dl([
        ['Status', h('span', { id: 'job-status' }, badge(job.status))],
        ['Kind', h('code', null, job.kind)],
        ['Rule', job.rule],
        ['Event', h('a', { href: '#/events/' + job.event_id }, '#' + job.event_id)],
        ['Attempts', String(job.attempts)],
        ['Created', time(job.created_at)],
        moving ? ['Next attempt', [time(job.next_attempt_at), ' (', time(job.next_attempt_at, { rel: true }), ')']] : null,
        ['Finished', job.finished_at ? time(job.finished_at) : '—'],
        job.note ? ['Note', job.note] : null,
        ['Idempotency key', h('code', { class: 'wrap' }, job.idempotency_key)],
      ])),
      card('What it does', json(job.spec))),
    card(`Attempts (${job.attempt_log.length})`, job.attempt_log.length ? attemptsTable(job.attempt_log) : empty('No attempts yet'))));
  if (moving) ctx.refreshIn(1000);
}

// ---------------------------------------------------------------------------------------------
// Callback tasks

// The queue (open and claimed tasks, most urgent first: priority, then due time), or one status.
async function renderTasks(ctx) {
  const status = ctx.params.get('status') || 'queue';
  const fetchStatus = (st) => api('/v1/callback-tasks?limit=200&status=' + encodeURIComponent(st));
  let tasks;
  if (status === 'queue') {
    const [open, claimed] = await Promise.all([fetchStatus('open'), fetchStatus('claimed')]);
    tasks = open.concat(claimed).sort((a, b) => (b.priority - a.priority) || (a.due_at - b.due_at) || (a.id - b.id));
  } else {
    tasks = await fetchStatus(status);
  }
  const overdue = tasks.filter((t) => (t.status === 'open' || t.status === 'claimed') && t.due_at < Date.now()).length;
  const subtitle = status === 'queue'
    ? `${plural(tasks.length, 'customer')} to call back, most urgent first${overdue ? ` · ${overdue} overdue` : ''}`
    : `Tasks that are ${status}`;
  const list = tasks.length ? h('div', { class: 'tasks' }, tasks.map((t) => taskCard(t)))
    : empty(status === 'queue' ? 'Nobody is waiting for a call back' : `No ${status} callback tasks`,
      status === 'queue' ? 'New tasks appear here when a rule opens one.' : null);
  ctx.mount(h('div', { class: 'page' },
    pageHead('Callback tasks', subtitle, refreshButton()),
    tabs(status, [['queue', 'Queue', '#/tasks'], ...TASK_STATUSES.map((st) => [st, st[0].toUpperCase() + st.slice(1), '#/tasks?status=' + st])]),
    list));
  ctx.refreshIn(30000);
}

function dueLabel(t) {
  const due = toDate(t.due_at);
  if (!due) return null;
  const open = t.status === 'open' || t.status === 'claimed';
  const overdue = open && due.getTime() < Date.now();
  return h('span', { class: ['due', overdue ? 'overdue' : null], title: fmtFull.format(due) },
    overdue ? `Overdue since ${formatLocal(due)} (${relative(due)})` : `Due ${formatLocal(due)} (${relative(due)})`);
}

function taskCard(t) {
  const reasons = Array.isArray(t.reasons) ? t.reasons : [];
  const body = h('div', { class: 'task-forms' });
  const open = t.status === 'open';
  const active = open || t.status === 'claimed';
  const refresh = () => route({ quiet: true });

  const showForm = (kind) => {
    const agent = localStorage.getItem(AGENT_KEY) || '';
    const field = kind === 'claim'
      ? h('input', { name: 'agent', required: true, value: agent, placeholder: 'Your name', autocomplete: 'name', maxlength: 200 })
      : h('textarea', { name: 'note', required: kind === 'complete', rows: 2, maxlength: 2000,
        placeholder: kind === 'complete' ? 'What happened on the call?' : 'Why is the call back not needed?' });
    const label = { claim: 'Claim as', complete: 'Outcome note', cancel: 'Reason for cancelling' }[kind];
    const submit = h('button', { type: 'submit', class: ['btn', 'btn-small', kind === 'cancel' ? 'btn-danger' : 'btn-primary'] },
      { claim: 'Claim task', complete: 'Mark done', cancel: 'Cancel task' }[kind]);
    const form = h('form', { class: 'inline-form', 'data-form': kind },
      h('label', { class: 'field' }, h('span', null, label), field),
      h('div', { class: 'actions' }, submit,
        h('button', { type: 'button', class: 'btn btn-ghost btn-small', onclick: () => body.replaceChildren() }, 'Close')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const value = field.value.trim();
      if (kind !== 'cancel' && !value) { field.focus(); toast(kind === 'claim' ? 'Enter your name to claim the task.' : 'Write a short note about the call.', 'warn'); return; }
      if (kind === 'claim') localStorage.setItem(AGENT_KEY, value);
      const bodyJson = kind === 'claim' ? { agent: value } : { outcome: value || 'cancelled from the dashboard' };
      const done = await act(submit, () => api(`/v1/callback-tasks/${t.id}/${kind}`, { method: 'POST', body: bodyJson }),
        { claim: `Task for ${t.phone} claimed by ${value}`, complete: `Task for ${t.phone} marked done`, cancel: `Task for ${t.phone} cancelled` }[kind]);
      if (done) refresh();
    });
    body.replaceChildren(form);
    field.focus();
  };

  return h('article', { class: ['task', 'task-' + t.status], 'data-task': t.id },
    h('div', { class: 'task-main' },
      h('div', { class: 'task-who' },
        h('a', { class: 'task-phone', href: telHref(t.phone) }, t.phone),
        t.customer_name ? h('span', { class: 'task-name' }, t.customer_name) : null),
      h('div', { class: 'task-badges' },
        badge(t.status),
        h('span', { class: ['badge', t.priority > 1 ? 'tone-bad' : t.priority > 0 ? 'tone-warn' : 'tone-muted'], title: 'Higher is more urgent' }, `Priority ${t.priority}`))),
    h('div', { class: 'task-meta' }, active ? dueLabel(t) : null,
      t.claimed_by ? h('span', null, 'Claimed by ', h('strong', null, t.claimed_by)) : null,
      t.closed_at ? h('span', null, `${t.status === 'done' ? 'Done' : 'Closed'} `, time(t.closed_at)) : null,
      h('span', { class: 'muted' }, `Task #${t.id} · opened `, time(t.created_at))),
    reasons.length ? h('ul', { class: 'reasons' }, reasons.map((r) => h('li', null,
      h('span', null, r.reason || '—'),
      h('span', { class: 'muted small' }, r.rule || 'rule', r.event_id ? [' · ', h('a', { href: '#/events/' + r.event_id }, 'event #' + r.event_id)] : null,
        r.at ? [' · ', time(r.at)] : null)))) : null,
    t.outcome ? h('p', { class: 'task-outcome' }, h('strong', null, 'Outcome: '), t.outcome) : null,
    active ? h('div', { class: 'actions task-actions' },
      open ? h('button', { type: 'button', class: 'btn btn-small', 'data-action': 'claim', onclick: () => showForm('claim') }, 'Claim') : null,
      h('button', { type: 'button', class: 'btn btn-primary btn-small', 'data-action': 'complete', onclick: () => showForm('complete') }, 'Complete'),
      h('button', { type: 'button', class: 'btn btn-danger-ghost btn-small', 'data-action': 'cancel', onclick: () => showForm('cancel') }, 'Cancel')) : null,
    body);
}

// ---------------------------------------------------------------------------------------------
// Rules

function rulesTabs(current) {
  return tabs(current, [['status', 'Status', '#/rules'], ['what-if', 'What if…', '#/rules/what-if']]);
}

// Mutes in force, or an empty list when they cannot be read (the rules still show).
async function activeMutes() {
  try {
    return (await api('/v1/mutes')).mutes;
  } catch (e) {
    if (e.handled) throw e;
    return [];
  }
}

async function renderRules(ctx) {
  const [r, inst, mutes] = await Promise.all([api('/v1/rules'), instances(), activeMutes()]);
  state.ruleNames = r.rules.map((x) => x.name);
  const mutedUntil = new Map(mutes.filter((m) => m.scope === 'rule').map((m) => [m.value, m.until]));
  const broken = r.rules.filter((x) => x.status === 'error');
  const rows = r.rules.map((rule) => h('article', { class: ['rule', 'rule-' + rule.status], 'data-rule': rule.file },
    h('div', { class: 'rule-head' },
      badge(rule.status === 'active' ? 'ok' : rule.status, rule.status === 'active' ? 'ok' : rule.status),
      h('strong', { class: 'rule-name' }, rule.name),
      h('code', { class: 'muted small' }, rule.file),
      rule.priority !== null && rule.priority !== undefined ? h('span', { class: 'badge tone-muted', title: 'Lower runs first' }, `priority ${rule.priority}`) : null,
      mutedUntil.has(rule.name) ? h('a', { class: 'badge tone-warn', href: '#/mutes', title: 'Its actions are recorded as muted jobs, not run' },
        `muted until ${formatLocal(toDate(mutedUntil.get(rule.name)))}`) : null),
    rule.description ? h('p', { class: 'rule-desc' }, rule.description) : null,
    rule.error ? h('div', { class: 'rule-problem', role: 'alert' },
      h('code', { class: 'rule-error-where' }, `${rule.error.file}:${rule.error.line}:${rule.error.column}`),
      h('span', null, rule.error.message),
      h('span', { class: 'small' }, rule.running_last_good ? 'The last good version of this file keeps running.' : 'This rule is not running.')) : null,
    h('div', { class: 'rule-stats' },
      h('span', null, h('strong', null, String(rule.evaluations)), ' evaluated'),
      h('span', null, h('strong', null, String(rule.matches)), ' matched'),
      h('span', { class: rule.errors ? 'bad' : null }, h('strong', null, String(rule.errors)), ' errors'),
      rule.loaded_at ? h('span', { class: 'muted' }, 'loaded ', time(rule.loaded_at)) : null)));
  ctx.mount(h('div', { class: 'page' },
    pageHead('Rules', ['Directory ', h('code', null, r.dir), ` · ${plural(r.reloads, 'reload')}`], refreshButton()),
    instancesBanner(inst),
    rulesTabs('status'),
    h('div', { class: ['summary-bar', broken.length ? 'tone-bad' : 'tone-good'] },
      broken.length ? `${plural(broken.length, 'rule file')} ${broken.length === 1 ? 'does' : 'do'} not compile` : 'All rule files compile',
      h('span', { class: 'muted small' }, ' · version ', h('code', { title: r.version }, shortHash(r.version)))),
    r.rules.length ? h('div', { class: 'rules' }, rows) : empty('No rule files', 'Add .rhai files to the rules directory; they load within a second.')));
  ctx.refreshIn(3000);
}

// ---------------------------------------------------------------------------------------------
// What if: a candidate rules directory (on the server) against the stored events of a time range

const WHAT_IF_FIELDS = ['rules_dir', 'since', 'until', 'limit', 'examples'];
const CHANGE_LABEL = { newly_matches: 'newly matches', stops_matching: 'no longer matches', actions_change: 'actions change' };

async function renderWhatIf(ctx) {
  const [r, inst] = await Promise.all([api('/v1/rules'), instances()]);
  state.ruleNames = r.rules.map((x) => x.name);
  const w = state.whatIf;
  const field = (name, label, control, hint) => h('label', { class: 'field', 'data-field': name },
    h('span', null, label), control,
    hint ? h('small', { class: 'hint' }, hint) : null,
    h('small', { class: 'field-error', role: 'alert', hidden: true }));
  const form = h('form', { class: 'what-if-form', novalidate: true },
    field('rules_dir', 'Candidate rules directory',
      h('input', { name: 'rules_dir', required: true, value: w.form.rules_dir, spellcheck: 'false', autocomplete: 'off', placeholder: `e.g. ${r.dir}-candidate` }),
      'A directory on the server, such as a checkout of the change under review.'),
    field('since', 'Since',
      h('input', { name: 'since', required: true, value: w.form.since, spellcheck: 'false', placeholder: '7d' }),
      'A duration back from now (7d, 12h) or a time.'),
    field('until', 'Until (optional)',
      h('input', { name: 'until', type: 'datetime-local', value: w.form.until }),
      'Empty: up to now.'),
    field('limit', 'Most events',
      h('input', { name: 'limit', type: 'number', min: 1, max: 100000, value: w.form.limit, placeholder: '10000', inputmode: 'numeric' })),
    field('examples', 'Examples per change',
      h('input', { name: 'examples', type: 'number', min: 0, max: 20, value: w.form.examples, inputmode: 'numeric' })),
    h('div', { class: 'filter-actions' },
      h('button', { type: 'submit', class: 'btn btn-primary', 'data-action': 'what-if' }, 'Compare with stored events')));
  const formError = h('div', { class: 'form-error', role: 'alert', hidden: true });
  const result = h('div', { class: 'what-if-result', id: 'what-if-result' });

  // Shows the state (running, error, report) in this view while it is on screen.
  const paint = () => {
    const button = form.querySelector('button[type=submit]');
    button.disabled = w.running;
    button.textContent = w.running ? 'Comparing…' : 'Compare with stored events';
    const bad = w.error && w.error.data && w.error.data.parameter;
    for (const name of WHAT_IF_FIELDS) {
      const wrap = form.querySelector(`[data-field="${name}"]`);
      const input = wrap.querySelector('input');
      const message = wrap.querySelector('.field-error');
      const here = bad === name;
      input.classList.toggle('invalid', here);
      if (here) input.setAttribute('aria-invalid', 'true'); else input.removeAttribute('aria-invalid');
      message.hidden = !here;
      message.textContent = here ? w.error.message : '';
    }
    formError.hidden = !w.error || WHAT_IF_FIELDS.includes(bad);
    formError.replaceChildren(...(w.error ? [h('strong', null, w.error.status ? `Error ${w.error.status}` : 'Error'), ' ', w.error.message] : []));
    if (w.running) {
      result.replaceChildren(h('div', { class: 'loading', 'aria-busy': 'true' }, h('span', { class: 'spinner' }), 'Evaluating the stored events against the candidate rules…'));
    } else if (w.report) {
      result.replaceChildren(whatIfReport(w.report));
    } else {
      result.replaceChildren(card(null, empty('No comparison yet',
        'Name a rules directory on the server to see, rule by rule, which stored events it would match differently and which actions it would add or drop. Nothing is written.')));
    }
  };

  form.addEventListener('input', () => {
    const data = new FormData(form);
    for (const name of WHAT_IF_FIELDS) w.form[name] = String(data.get(name) || '');
  });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (w.running) return;
    const f = w.form;
    for (const name of WHAT_IF_FIELDS) f[name] = String(new FormData(form).get(name) || '').trim();
    const local = !f.rules_dir ? ['rules_dir', 'Name the candidate rules directory.']
      : !f.since ? ['since', 'Give a start: a duration back from now such as 7d, or a time.'] : null;
    if (local) {
      w.error = new ApiError(0, 'invalid_parameter', local[1], { parameter: local[0] });
      paint();
      form.querySelector(`[name="${local[0]}"]`).focus();
      return;
    }
    const body = { rules_dir: f.rules_dir, since: f.since };
    if (f.until) body.until = datetimeLocalToMs(f.until);
    if (f.limit) body.limit = Number(f.limit);
    if (f.examples) body.examples = Number(f.examples);
    w.running = true;
    w.error = null;
    paint();
    try {
      w.report = await api('/v1/what-if', { method: 'POST', body });
    } catch (e) {
      if (e.handled) { w.running = false; return; }
      w.error = e;
      w.report = null;
    }
    w.running = false;
    paint();
    if (form.isConnected && w.report) result.scrollIntoView({ block: 'start', behavior: 'smooth' });
  });

  ctx.mount(h('div', { class: 'page' },
    pageHead('Rules', ['Directory ', h('code', null, r.dir), ' · running version ', h('code', { title: r.version }, shortHash(r.version))]),
    instancesBanner(inst),
    rulesTabs('what-if'),
    card('What would a candidate rule set change?', [
      h('p', { class: 'card-intro' }, 'Evaluates the stored events of a time range against the rules in another directory and compares with what they got when they were processed. Counters are read, never written; no job is queued.'),
      form, formError]),
    result));
  paint();
}

function whatIfReport(rep) {
  const stat = (label, value, note, tone, id) => h('div', { class: ['stat', tone ? 'tone-' + tone : null], 'data-stat': id },
    h('span', { class: 'stat-label' }, label),
    h('span', { class: 'stat-value' }, String(value)),
    h('span', { class: 'stat-note' }, note));
  const errors = rep.candidate_errors || [];
  const changed = rep.changed_rules || [];
  const unchanged = rep.unchanged_rules || [];
  return h('div', { class: 'page', 'data-what-if': rep.candidate_version },
    h('p', { class: 'muted small what-if-meta' },
      'Candidate ', h('code', null, rep.rules_dir), ' (version ', h('code', { title: rep.candidate_version }, shortHash(rep.candidate_version)),
      ') · events received from ', time(rep.since, { day: true }), ' to ', time(rep.until, { day: true })),
    rep.truncated ? h('div', { class: 'banner tone-warn' }, h('strong', null, 'Only the newest events were compared'),
      h('span', null, 'The event limit cut the range short. Raise “Most events” or narrow the range to compare them all.')) : null,
    h('div', { class: 'stats stats-3' },
      stat('Events compared', rep.events_compared, 'with their stored evaluation', 'primary', 'compared'),
      stat('Changed', rep.events_changed, 'matched rules or actions differ', rep.events_changed ? 'warn' : 'good', 'changed'),
      stat('Skipped', rep.events_skipped, 'not processed yet, so nothing to compare', null, 'skipped')),
    errors.length ? card(`Candidate files that do not compile (${errors.length})`, h('div', { class: 'rules' }, errors.map((e) =>
      h('div', { class: 'rule-problem', role: 'alert' },
        h('code', { class: 'rule-error-where' }, `${e.file}:${e.line}:${e.column}`),
        h('span', null, e.message)))), { cls: 'card-bad', extra: h('span', { class: 'muted small' }, 'left out of the comparison') }) : null,
    card(`Rules that change (${changed.length})`, changed.length ? h('div', { class: 'rules' }, changed.map(ruleChange))
      : empty('No rule changes anything', 'Every compared event would match the same rules with the same actions.')),
    card(`Unchanged rules (${unchanged.length})`, unchanged.length
      ? h('div', { class: 'chips' }, unchanged.map((name) => h('span', { class: 'chip', 'data-unchanged': name }, name)))
      : h('p', { class: 'muted small' }, 'None.')));
}

function ruleChange(c) {
  const n = (value, label, tone) => h('span', { class: ['delta', value ? 'tone-' + tone : 'zero'] }, h('strong', null, String(value)), ' ', label);
  return h('article', { class: 'rule what-if-rule', 'data-rule': c.rule },
    h('div', { class: 'rule-head' },
      h('strong', { class: 'rule-name' }, c.rule),
      h('span', { class: 'matched-arrow', title: 'Events it matched when they were processed → events it matches with the candidate rules' },
        'matched ', h('strong', null, String(c.matched_before)), ' → ', h('strong', null, String(c.matched_after)))),
    h('div', { class: 'deltas' },
      n(c.newly_matching, 'newly matching', 'info'),
      n(c.stops_matching, 'no longer matching', 'warn'),
      n(c.actions_added, plural(c.actions_added, 'action').replace(/^\d+ /, '') + ' added', 'info'),
      n(c.actions_removed, plural(c.actions_removed, 'action').replace(/^\d+ /, '') + ' removed', 'warn'),
      n(c.errors_after, c.errors_after === 1 ? 'failure' : 'failures', 'bad')),
    (c.examples || []).length ? h('details', { class: 'examples', open: true },
      h('summary', null, `Example events (${c.examples.length})`),
      table([
        { label: 'Event', cls: 'nowrap', cell: (x) => h('a', { href: '#/events/' + x.event_id, class: 'mono', 'data-example': x.event_id }, '#' + x.event_id) },
        { label: 'Received', cls: 'nowrap', cell: (x) => time(x.received_at) },
        { label: 'Phone', cls: 'nowrap', cell: (x) => x.customer_phone || h('span', { class: 'muted' }, '—') },
        { label: 'Outcome', cell: (x) => outcomeBadge(x.outcome) },
        { label: 'Change', cell: (x) => badge(x.change, CHANGE_LABEL[x.change] || x.change) },
        { label: 'Actions before', cell: (x) => actionList(x.actions_before) },
        { label: 'Actions after', cell: (x) => actionList(x.actions_after) },
      ], c.examples, { onRow: (x) => { location.hash = '#/events/' + x.event_id; } })) : null);
}

// Actions as the rules render them, one line each: the kind and whom it goes to.
function actionList(actions) {
  if (!actions || !actions.length) return h('span', { class: 'muted' }, 'none');
  return h('ul', { class: 'action-list' }, actions.map((a) => h('li', { title: JSON.stringify(a, null, 2) },
    h('code', null, a.kind || 'action'), actionTarget(a) ? [' ', h('span', { class: 'muted' }, actionTarget(a))] : null)));
}

function actionTarget(a) {
  const to = (v) => (Array.isArray(v) ? v.join(', ') : v);
  if (a.kind === 'email') return a.to ? 'to ' + to(a.to) : null;
  if (a.kind === 'webhook') return a.target ? 'to ' + a.target : a.url || null;
  if (a.kind === 'callback_task' || a.kind === 'close_callback_tasks') return a.phone || null;
  return null;
}

// ---------------------------------------------------------------------------------------------
// Mutes: silence a rule or a phone for a while (its actions are recorded as muted jobs, not run)

const MUTE_DURATIONS = [['30m', '30 minutes'], ['1h', '1 hour'], ['2h', '2 hours'], ['4h', '4 hours'], ['8h', '8 hours'], ['1d', '1 day'], ['7d', '7 days']];

function muteState(m) {
  if (m.lifted_at) return 'lifted';
  return m.until <= Date.now() ? 'expired' : 'in force';
}

async function renderMutes(ctx) {
  const all = ctx.params.get('all') === 'true';
  const [page, names] = await Promise.all([api('/v1/mutes' + (all ? '?all=true' : '')), ruleNames()]);
  const mutes = page.mutes || [];
  const refresh = () => route({ quiet: true });

  const list = mutes.length ? table([
    { label: 'Mute', cls: 'nowrap', cell: (m) => h('span', { class: 'mono' }, '#' + m.id) },
    { label: 'Silences', cell: (m) => h('span', null, badge(m.scope), ' ', m.scope === 'phone' ? h('a', { href: hashWith('/events', new URLSearchParams({ phone: m.value })), class: 'mono' }, m.value) : h('strong', null, m.value)) },
    { label: 'State', cell: (m) => badge(muteState(m)) },
    { label: 'Until', cls: 'nowrap', cell: (m) => m.lifted_at ? h('span', null, h('span', { class: 'muted' }, 'lifted '), time(m.lifted_at)) : h('span', null, time(m.until), h('span', { class: 'muted small' }, ' (', time(m.until, { rel: true }), ')')) },
    { label: 'Reason', cls: 'note', cell: (m) => m.reason },
    { label: 'Since', cls: 'nowrap', cell: (m) => time(m.created_at) },
    { label: '', cls: 'actions-cell', cell: (m) => muteState(m) === 'in force'
      ? h('button', {
        type: 'button', class: 'btn btn-small', 'data-action': 'lift',
        onclick: (ev) => act(ev.currentTarget, () => api(`/v1/mutes/${m.id}/lift`, { method: 'POST' }),
          `Mute on ${m.scope} ${m.value} lifted: its actions run again`).then((r) => r && refresh()),
      }, 'Lift') : h('span', { class: 'muted' }, '—') },
  ], mutes, { rowClass: (m) => 'mute-' + muteState(m).replace(' ', '-') })
    : empty(all ? 'No mutes yet' : 'Nothing is muted', 'Every rule runs its actions and every phone gets them.');

  ctx.mount(h('div', { class: 'page' },
    pageHead('Mutes', 'Silence a rule or a phone for a while: matching actions are recorded as muted jobs instead of running', refreshButton()),
    card('Add a mute', muteForm(names, refresh)),
    card(null, [
      h('div', { class: 'card-toolbar' },
        h('h2', null, all ? `All mutes (${mutes.length})` : `In force (${mutes.length})`),
        h('label', { class: 'switch' },
          h('input', { type: 'checkbox', name: 'all', checked: all, onchange: (ev) => { location.hash = ev.currentTarget.checked ? '#/mutes?all=true' : '#/mutes'; } }),
          h('span', null, 'Show lifted and expired'))),
      list], { cls: 'card-flush' }),
    mutes.some((m) => muteState(m) === 'in force') ? h('p', { class: 'muted small' }, 'Held-back actions are listed under ',
      h('a', { href: '#/jobs?status=muted' }, 'Jobs → Muted'), '.') : null));
}

function muteForm(names, after) {
  const scope = h('select', { name: 'scope' }, h('option', { value: 'rule' }, 'A rule'), h('option', { value: 'phone' }, 'A phone number'));
  const rulePicker = h('select', { name: 'rule' }, h('option', { value: '' }, 'Choose a rule…'), names.map((n) => h('option', { value: n }, n)));
  const phone = h('input', { name: 'phone', type: 'tel', inputmode: 'tel', placeholder: 'e.g. 13800138000', autocomplete: 'off', hidden: true });
  const ends = h('select', { name: 'ends' }, MUTE_DURATIONS.map(([v, label]) => h('option', { value: v, selected: v === '2h' }, 'for ' + label)),
    h('option', { value: 'until' }, 'until a time…'));
  const until = h('input', { name: 'until', type: 'datetime-local', hidden: true });
  const reason = h('input', { name: 'reason', required: true, maxlength: 500, placeholder: 'Why? e.g. the CRM endpoint is down for maintenance' });
  const error = h('p', { class: 'form-error', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', 'data-action': 'mute' }, 'Mute');
  const sync = () => {
    rulePicker.hidden = scope.value !== 'rule';
    phone.hidden = scope.value !== 'phone';
    until.hidden = ends.value !== 'until';
  };
  scope.addEventListener('change', sync);
  ends.addEventListener('change', () => { sync(); if (!until.hidden) until.focus(); });
  const field = (label, ...controls) => h('label', { class: 'field' }, h('span', null, label), controls);
  const form = h('form', { class: 'mute-form', novalidate: true },
    field('Silence', scope),
    h('div', { class: 'field' }, h('span', null, 'Which'), rulePicker, phone),
    h('div', { class: 'field' }, h('span', null, 'How long'), ends, until),
    h('label', { class: 'field field-wide' }, h('span', null, 'Reason (recorded on every muted action)'), reason),
    h('div', { class: 'filter-actions' }, submit),
    error);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const show = (message, control) => {
      error.textContent = message;
      error.hidden = false;
      if (control) control.focus();
    };
    const value = scope.value === 'rule' ? rulePicker.value : phone.value.trim();
    if (!value) return show(scope.value === 'rule' ? 'Choose the rule to mute.' : 'Enter the phone number to mute.', scope.value === 'rule' ? rulePicker : phone);
    const body = { scope: scope.value, value, reason: reason.value.trim() };
    if (ends.value === 'until') {
      if (!until.value) return show('Choose when the mute ends.', until);
      body.until = datetimeLocalToMs(until.value);
    } else {
      body.for = ends.value;
    }
    if (!body.reason) return show('Say why: the reason is recorded on every muted action.', reason);
    error.hidden = true;
    submit.disabled = true;
    try {
      const mute = await api('/v1/mutes', { method: 'POST', body });
      toast(`${mute.scope === 'rule' ? 'Rule' : 'Phone'} ${mute.value} muted until ${formatLocal(toDate(mute.until))}`);
      after();
    } catch (e) {
      if (!e.handled) show(e.message);
    } finally {
      submit.disabled = false;
    }
  });
  sync();
  return form;
}

// ---------------------------------------------------------------------------------------------

window.addEventListener('hashchange', () => route());
document.addEventListener('DOMContentLoaded', () => {
  $('#logout').addEventListener('click', () => signOut('You are signed out.', 'info'));
  route();
});
