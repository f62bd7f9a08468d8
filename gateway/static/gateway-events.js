// gateway-events.js — dependency-free browser client for the event gateway's
// Server-Sent Events stream. Copy this file into your frontend; no build step.
//
//   import { openGatewayStream } from './gateway-events.js';
//   const stream = openGatewayStream({
//     url: '/api/realtime/events', shop: 'demo.myshopify.com',
//     getSessionToken: () => shopify.idToken(),       // optional
//     onEvent: ({ type, id, data }) => { ... },
//     onStatus: (status, detail) => { ... },
//     onJob: (job, change) => { ... },                // optional: the jobs view
//   });
//   stream.jobs();   // [{job, event, id, data, ended}, ...]: each job's latest event
//   stream.close();
//
// The jobs view (docs/frontend.md, "Jobs"): job -> its latest event, built from
// the gateway's `snapshot` frame (sent after `connected` when there is no
// Last-Event-ID, and after every `resync`) and from live events whose JSON
// payload has the job key (`jobKey`, default 'jobId', as the gateway's
// sse.job_key). `completion` and `error` end a job. A `resync` empties the
// view and the snapshot that follows rebuilds it. A job never moves backwards:
// an event whose durable id (EPOCH:OFFSET) is not greater than the job's
// current one of the same epoch leaves the view as it is (it still reaches
// onEvent). A frame without its own id (a plain event older than the snapshot
// before it) never reopens an ended job. Jobs are keyed by their text, so 7 and
// '7' are one job; integer jobs above 2**53 lose precision in JSON.parse: send
// such ids as strings. The view keeps at most `maxJobs` jobs (default 100, as
// the gateway's sse.snapshot_jobs): past it, the least recently updated ended
// jobs are removed; running jobs never are.

/**
 * @typedef {Object} GatewayEvent
 * @property {string} type  Event name: one of `events`, or 'resync'.
 * @property {string} id    Gateway event id ('' when the frame had none).
 * @property {*} data       Parsed JSON payload, or the raw string if not JSON.
 * @property {string} raw   The payload exactly as received.
 */

/**
 * @typedef {Object} GatewayJob  One job of the jobs view (frozen).
 * @property {string|number} job  The job value as published.
 * @property {string} event  Its latest event's name ('progress', 'completion', ...).
 * @property {string} id     That event's id.
 * @property {*} data        That event's payload (a JSON object).
 * @property {boolean} ended Whether that event is `completion` or `error`.
 */

/**
 * Changes passed to `onJob(job, change)`: 'snapshot' (set by a snapshot frame),
 * 'event' (set by a live or replayed event), 'removed' (dropped: a `resync`
 * emptied the view, a snapshot no longer lists it, or an ended job made room under
 * `maxJobs`; `job` is its last state).
 */

/**
 * Status values passed to `onStatus(status, detail)`:
 * 'connecting' (opening, or the browser is retrying by itself),
 * 'open' (the `connected` frame arrived; detail = its data),
 * 'reconnecting' (stream refused or ticket fetch failed; detail = {delayMs, reason}),
 * 'revoked' (merchant no longer verifies; closed for good),
 * 'closed' (close() was called).
 */

const BACKOFF_BASE_MS = 1000;
const BACKOFF_CAP_MS = 30000;

/** Parse a payload as JSON when possible, else hand back the raw string. */
function parse(raw) {
  try { return JSON.parse(raw); } catch (_) { return raw; }
}

const DURABLE_ID = /^([0-9a-z]{1,32}):([1-9][0-9]{0,18})$/;

/** Whether id `a` is a durable id not greater than `b` of the same epoch (no precision loss). */
function notAfter(a, b) {
  const x = DURABLE_ID.exec(a);
  const y = DURABLE_ID.exec(b || '');
  if (!x || !y || x[1] !== y[1]) return false;
  return x[2].length < y[2].length || (x[2].length === y[2].length && x[2] <= y[2]);
}

/** The view's key for a job value (a 1-128 character string or an integer), else null. */
function jobKeyOf(value) {
  if (typeof value === 'string') {  // 1-128 characters (code points), as the gateway counts
    const length = [...value].length;
    return length >= 1 && length <= 128 ? value : null;
  }
  return Number.isInteger(value) ? String(value) : null;
}

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

/**
 * Open the gateway's event stream for one shop, with tickets, reconnects and
 * replay handled. EventSource retries by itself after a dropped connection,
 * but gives up for good on any non-200 answer (expired ticket 401, 503, ...);
 * this client then fetches a fresh ticket and reopens with exponential
 * backoff and jitter, passing the last seen id so the gateway replays.
 *
 * @param {Object} opts
 * @param {string} opts.url  Stream endpoint, relative ('/api/realtime/events') or absolute.
 * @param {string} opts.shop Shop domain, e.g. 'demo.myshopify.com'.
 * @param {() => (string|Promise<string>)} [opts.getSessionToken] Returns a fresh
 *   session token (JWT). When given, a stream ticket is obtained with it from
 *   `POST {url}/ticket?shop=SHOP` and the token itself never goes in a URL.
 * @param {(ev: GatewayEvent) => void} [opts.onEvent] Called for each event, for 'resync'
 *   (refetch your state: events may have been missed; the jobs view is emptied
 *   and rebuilt by the snapshot that follows) and for 'snapshot' (data: {jobs}).
 * @param {(status: string, detail?: *) => void} [opts.onStatus] Connection status changes.
 * @param {string[]} [opts.events] Event names to listen for.
 * @param {string} [opts.jobKey] Payload field naming the job (the gateway's sse.job_key).
 * @param {number} [opts.maxJobs] Jobs the view keeps at most (default 100; set it to
 *   the gateway's sse.snapshot_jobs if you raised that): past it, the least recently
 *   updated ended jobs are removed.
 * @param {(job: GatewayJob, change: string) => void} [opts.onJob] Called for each change
 *   of the jobs view, after onEvent.
 * @returns {{close: () => void, jobs: () => GatewayJob[],
 *   job: (key: string|number) => (GatewayJob|undefined),
 *   onJob: (fn: (job: GatewayJob, change: string) => void) => (() => void)}}
 *   `jobs()` is the whole view, in the order jobs appeared (a snapshot's: by id);
 *   the same array until the view changes. `onJob(fn)` adds a listener and
 *   returns its remover.
 */
export function openGatewayStream({
  url, shop, getSessionToken, onEvent = () => {}, onStatus = () => {},
  events = ['progress', 'stage', 'completion', 'error'],
  jobKey = 'jobId', onJob, maxJobs = 100,
}) {
  const base = (globalThis.location && globalThis.location.href) || undefined;
  let es = null;             // current EventSource
  let closed = false;        // close() called or revoked
  let lastEventId = '';      // newest id seen, for replay on reopen
  let attempt = 0;           // consecutive failures, for backoff
  let ticket = null;         // newest ticket
  let ticketExpiresAt = 0;   // ms epoch
  let esTicketExpiresAt = 0; // expiry of the ticket in the current EventSource's URL
  let reopenTimer = null;
  let refreshTimer = null;
  const seen = new Set();    // recent ids: never hand the app the same event twice
  const view = new Map();    // job key -> GatewayJob
  let viewList = null;       // cached jobs() answer, null when the view changed
  const touched = new Set(); // the view's keys, least recently updated first
  const jobListeners = new Set(onJob ? [onJob] : []);
  const terminal = new Set(['completion', 'error']);

  const status = (s, detail) => { try { onStatus(s, detail); } catch (e) { console.error(e); } };
  const notify = (changes) => {
    for (const [job, change] of changes) {
      for (const fn of [...jobListeners]) {
        try { fn(job, change); } catch (e) { console.error(e); }
      }
    }
  };
  const entry = (job, event, id, data) =>
    Object.freeze({ job, event, id, data, ended: terminal.has(event) });
  const touch = (key) => { touched.delete(key); touched.add(key); };
  const put = (key, job, changes, change) => {
    view.set(key, job); // a new job goes last; a known one keeps its place
    touch(key);
    viewList = null;
    changes.push([job, change]);
  };
  const remove = (key, changes) => {
    const job = view.get(key);
    view.delete(key);
    touched.delete(key);
    viewList = null;
    changes.push([job, 'removed']);
  };
  const clear = (changes, keep = new Set()) => {
    for (const key of [...view.keys()]) if (!keep.has(key)) remove(key, changes);
  };
  /** Past `maxJobs`, remove the least recently updated ended jobs. */
  const trim = (changes) => {
    if (view.size <= maxJobs) return;
    for (const key of [...touched]) {
      if (view.size <= maxJobs) break;
      if (view.get(key).ended) remove(key, changes);
    }
  };

  /** A live or replayed event: update its job unless that would move it backwards. */
  function applyEvent(type, id, data, changes) {
    if (!isObject(data)) return;
    const key = jobKeyOf(data[jobKey]);
    if (key === null) return;
    const current = view.get(key);
    if (current && (notAfter(id, current.id) || (!id && current.ended))) return;
    put(key, entry(data[jobKey], type, id, data), changes, 'event');
    trim(changes);
  }

  /** A snapshot frame: the whole view, replaced (jobs it does not list are removed). */
  function applySnapshot(data, changes) {
    const jobs = isObject(data) && Array.isArray(data.jobs) ? data.jobs : null;
    if (!jobs) { console.warn('gateway snapshot without jobs:', data); return; }
    const fresh = [];
    for (const j of jobs) {
      const key = isObject(j) ? jobKeyOf(j.job) : null;
      if (key !== null && typeof j.event === 'string') {
        fresh.push([key, entry(j.job, j.event, String(j.id ?? ''), j.data)]);
      }
    }
    clear(changes, new Set(fresh.map(([key]) => key)));
    for (const [key, job] of fresh) {
      view.delete(key); // (re)inserted last: the view takes the snapshot's order
      put(key, job, changes, 'snapshot');
    }
    trim(changes);
  }

  let reported = '';  // the id the current EventSource reported last
  const emit = (type, ev) => {
    // A frame without `id:` reports the previous id again: such a frame (a resync, a
    // plain event the gateway sent without its id after a snapshot) has none of its own.
    // Ids of real events never repeat one after the other; a snapshot's id may be that
    // of an event already seen.
    const id = ev.lastEventId && ev.lastEventId !== reported ? ev.lastEventId : '';
    // after a resync an event may come under the id seen last (a failover gave it
    // again): its own, unless a snapshot (which sets the id again) came between
    reported = type === 'resync' ? '' : ev.lastEventId || '';
    if (id && type !== 'snapshot') {
      if (seen.has(id)) return;
      seen.add(id);
      if (seen.size > 1000) seen.delete(seen.values().next().value);
    }
    if (id) lastEventId = id;
    const data = parse(ev.data);
    const changes = [];
    if (type === 'resync') {
      clear(changes);
      seen.clear();  // after a failover lost writes, their ids go to new events
    } else if (type === 'snapshot') applySnapshot(data, changes);
    else applyEvent(type, id, data, changes);
    try { onEvent({ type, id, data, raw: ev.data }); }
    catch (e) { console.error(e); }
    notify(changes);
  };

  /** Fetch a new ticket with a fresh session token; schedule its refresh at ~80% of its life. */
  async function fetchTicket() {
    const token = await getSessionToken();
    const u = new URL(url, base);
    u.pathname = u.pathname.replace(/\/+$/, '') + '/ticket';
    u.search = new URLSearchParams({ shop }).toString();
    const res = await fetch(u, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
    if (!res.ok) throw new Error(`ticket request failed: HTTP ${res.status}`);
    const body = await res.json();
    if (closed) return;  // close() came meanwhile: no refresh timer
    const ttl = Number(body.expiresIn) > 0 ? Number(body.expiresIn) : 60;
    ticket = body.ticket;
    ticketExpiresAt = Date.now() + ttl * 1000;
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => {
      if (!closed) fetchTicket().catch((e) => console.warn('gateway ticket refresh:', e));
    }, Math.max(1000, ttl * 800));
  }

  function streamUrl() {
    const u = new URL(url, base);
    const q = new URLSearchParams(u.search);
    q.set('shop', shop);
    if (ticket) q.set('ticket', ticket);
    if (lastEventId) q.set('lastEventId', lastEventId);
    u.search = q.toString();
    return u.toString();
  }

  /** Close the current EventSource and reopen after a jittered exponential delay. */
  function scheduleReopen(reason) {
    if (es) { es.close(); es = null; }
    if (closed) return;
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
    const delayMs = Math.round(ceiling / 2 + Math.random() * ceiling / 2);
    attempt += 1;
    status('reconnecting', { delayMs, reason });
    clearTimeout(reopenTimer);
    reopenTimer = setTimeout(connect, delayMs);
  }

  async function connect() {
    if (closed) return;
    status('connecting');
    if (getSessionToken && (!ticket || Date.now() > ticketExpiresAt - 5000)) {
      try { await fetchTicket(); } catch (e) { scheduleReopen(String(e && e.message || e)); return; }
      if (closed) return;
    }
    const source = new EventSource(streamUrl());
    es = source;
    reported = '';
    esTicketExpiresAt = ticketExpiresAt;

    source.addEventListener('connected', (ev) => {
      attempt = 0;
      status('open', parse(ev.data));
    });
    for (const type of events) {
      if (type !== 'error') source.addEventListener(type, (ev) => emit(type, ev));
    }
    source.addEventListener('resync', (ev) => emit('resync', ev));
    source.addEventListener('snapshot', (ev) => emit('snapshot', ev));
    // The stream ends after `shutdown` (with a jittered retry:); EventSource
    // reconnects by itself, sending Last-Event-ID, so nothing to do but report.
    source.addEventListener('shutdown', () => status('connecting', { reason: 'shutdown' }));
    source.addEventListener('revoked', (ev) => {
      closed = true;
      source.close();
      clearTimeout(refreshTimer);
      status('revoked', parse(ev.data));
    });
    // 'error' is both our event name and EventSource's connection-error event:
    // ours is a MessageEvent carrying data, the connection one has none.
    source.addEventListener('error', (ev) => {
      if (ev.data !== undefined) {
        if (events.includes('error')) emit('error', ev);
        return;
      }
      if (source !== es || closed) return;
      if (source.readyState === EventSource.CLOSED) {
        ticket = null; // refused (expired ticket 401, 503, 429, ...): new ticket, then reopen
        scheduleReopen('refused');
      } else if (getSessionToken && Date.now() > esTicketExpiresAt) {
        scheduleReopen('ticket_expired'); // its URL's ticket would be refused: reopen with a new one
      } else {
        status('connecting', { reason: 'retry' }); // the browser retries by itself
      }
    });
  }

  connect();

  return {
    /** Stop for good: close the stream and cancel every timer. */
    close() {
      closed = true;
      clearTimeout(reopenTimer);
      clearTimeout(refreshTimer);
      if (es) { es.close(); es = null; }
      status('closed');
    },
    /** The jobs view: each job's latest event, in the order the jobs appeared. */
    jobs() {
      if (viewList === null) viewList = Object.freeze([...view.values()]);
      return viewList;
    },
    /** One job's latest event (7 and '7' are one job), or undefined. */
    job(key) { const k = jobKeyOf(key); return k === null ? undefined : view.get(k); },
    /** Call `fn(job, change)` on every change of the view; returns a function that stops it. */
    onJob(fn) { jobListeners.add(fn); return () => { jobListeners.delete(fn); }; },
  };
}
