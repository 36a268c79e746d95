// Switchboard operator dashboard: a small single-page app over the admin JSON API.
// Hash routes (#/, #/events, #/events/ID, #/jobs, #/jobs/ID, #/tasks, #/rules, #/login).
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
const JOB_STATUSES = ['dead', 'retrying', 'pending', 'done', 'suppressed', 'cancelled'];
const TASK_STATUSES = ['open', 'claimed', 'done', 'cancelled'];
const BADGE_TONE = {
  ok: 'good', active: 'good', done: 'good', processed: 'good', matched: 'good', success: 'good',
  dead: 'bad', error: 'bad', failed: 'bad', permanent: 'bad',
  retrying: 'warn', transient: 'warn', throttled: 'warn', processing: 'info',
  pending: 'info', open: 'info', claimed: 'violet',
  suppressed: 'muted', muted: 'muted', cancelled: 'muted', disabled: 'muted', 'not matched': 'muted',
};

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  loginMessage: null,
  returnTo: null,
  seq: 0,
  timer: null,
  ruleNames: null,
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

function time(value, { rel = false } = {}) {
  const d = toDate(value);
  if (!d) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: d.toISOString(), title: `${fmtFull.format(d)} (${relative(d)})` },
    rel ? relative(d) : formatLocal(d));
}

function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  return `${Math.round(ms / 60000)} min`;
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
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
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
    throw new ApiError(response.status, (data && data.error) || 'http_' + response.status, message);
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
  const o = await api('/v1/overview?minutes=60');
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

  // `muted` (a mute held the job back) is counted but cannot be listed by status.
  const shown = JOB_STATUSES.concat(jobs.muted ? ['muted'] : []);
  const jobRow = h('div', { class: 'job-counts' }, shown.map((st) =>
    h(JOB_STATUSES.includes(st) ? 'a' : 'div', { class: 'job-count', href: JOB_STATUSES.includes(st) ? '#/jobs?status=' + st : null },
      badge(st), h('span', { class: 'job-count-n' }, String(jobs[st] || 0)))));

  const view = h('div', { class: 'page' },
    pageHead('Overview', [`Last ${o.minutes} minutes · updated `, time(o.now)], refreshButton()),
    stats,
    h('div', { class: 'grid-2' },
      card('Events per minute', chart(o), { cls: 'span-2', extra: h('span', { class: 'muted small' }, `${o.events} in ${o.minutes} min`) }),
      card('Jobs in this window', jobRow, { extra: h('a', { href: '#/jobs', class: 'small' }, 'All jobs →') }),
      card('Rules', dl([
        ['Rule files', String(rules.count ?? '—')],
        ['Broken files', rules.broken ? badge('error', String(rules.broken)) : badge('ok', 'none')],
        ['Version', h('code', { title: rules.version || '' }, shortHash(rules.version))],
      ]), { extra: h('a', { href: '#/rules', class: 'small' }, 'Rule status →') })));
  ctx.mount(view);
  ctx.refreshIn(15000);
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
  } else if (!page.events.length) {
    results = empty('No events found', p.toString() ? 'Nothing matches these filters.' : 'No notification has been received yet.');
  } else {
    results = h('div', null,
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
    ['Source', ev.source_addr || '—'],
    ['Content type', ev.content_type || '—'],
    ['Dedupe key', h('code', { title: ev.dedupe_key }, shortHash(ev.dedupe_key))],
  ]);

  const view = h('div', { class: 'page' },
    h('a', { href: '#/events', class: 'back' }, '← Events'),
    pageHead(`Event #${ev.id}`, [badge(ev.state), ' ', outcomeBadge(e.outcome), ' received ', time(ev.received_at), ' (', time(ev.received_at, { rel: true }), ')'], refreshButton()),
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
      h('span', { class: 'muted small job-meta' }, plural(job.attempts, 'attempt'), ' · created ', time(job.created_at))),
    job.note ? h('p', { class: 'small muted' }, job.note) : null,
    attempts && attempts.length ? attemptsTable(attempts) : null,
    detail instanceof Error ? h('p', { class: 'small bad' }, 'Attempts could not be read: ' + detail.message) : null);
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

async function renderRules(ctx) {
  const r = await api('/v1/rules');
  state.ruleNames = r.rules.map((x) => x.name);
  const broken = r.rules.filter((x) => x.status === 'error');
  const rows = r.rules.map((rule) => h('article', { class: ['rule', 'rule-' + rule.status], 'data-rule': rule.file },
    h('div', { class: 'rule-head' },
      badge(rule.status === 'active' ? 'ok' : rule.status, rule.status === 'active' ? 'ok' : rule.status),
      h('strong', { class: 'rule-name' }, rule.name),
      h('code', { class: 'muted small' }, rule.file),
      rule.priority !== null && rule.priority !== undefined ? h('span', { class: 'badge tone-muted', title: 'Lower runs first' }, `priority ${rule.priority}`) : null),
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
    h('div', { class: ['summary-bar', broken.length ? 'tone-bad' : 'tone-good'] },
      broken.length ? `${plural(broken.length, 'rule file')} ${broken.length === 1 ? 'does' : 'do'} not compile` : 'All rule files compile',
      h('span', { class: 'muted small' }, ' · version ', h('code', { title: r.version }, shortHash(r.version)))),
    r.rules.length ? h('div', { class: 'rules' }, rows) : empty('No rule files', 'Add .rhai files to the rules directory; they load within a second.')));
  ctx.refreshIn(3000);
}

// ---------------------------------------------------------------------------------------------

window.addEventListener('hashchange', () => route());
document.addEventListener('DOMContentLoaded', () => {
  $('#logout').addEventListener('click', () => signOut('You are signed out.', 'info'));
  route();
});
