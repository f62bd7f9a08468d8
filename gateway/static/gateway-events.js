// gateway-events.js — dependency-free browser client for the event gateway's
// Server-Sent Events stream. Copy this file into your frontend; no build step.
//
//   import { openGatewayStream } from './gateway-events.js';
//   const stream = openGatewayStream({
//     url: '/api/realtime/events', shop: 'demo.myshopify.com',
//     getSessionToken: () => shopify.idToken(),       // optional
//     onEvent: ({ type, id, data }) => { ... },
//     onStatus: (status, detail) => { ... },
//   });
//   stream.close();

/**
 * @typedef {Object} GatewayEvent
 * @property {string} type  Event name: one of `events`, or 'resync'.
 * @property {string} id    Gateway event id ('' when the frame had none).
 * @property {*} data       Parsed JSON payload, or the raw string if not JSON.
 * @property {string} raw   The payload exactly as received.
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
 * @param {(ev: GatewayEvent) => void} [opts.onEvent] Called for each event and for 'resync'
 *   (refetch your state: events may have been missed).
 * @param {(status: string, detail?: *) => void} [opts.onStatus] Connection status changes.
 * @param {string[]} [opts.events] Event names to listen for.
 * @returns {{close: () => void}}
 */
export function openGatewayStream({
  url, shop, getSessionToken, onEvent = () => {}, onStatus = () => {},
  events = ['progress', 'stage', 'completion', 'error'],
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

  const status = (s, detail) => { try { onStatus(s, detail); } catch (e) { console.error(e); } };
  const emit = (type, ev) => {
    // A frame without `id:` reports the previous id, so resync is never deduplicated.
    if (ev.lastEventId && type !== 'resync') {
      if (seen.has(ev.lastEventId)) return;
      seen.add(ev.lastEventId);
      if (seen.size > 1000) seen.delete(seen.values().next().value);
      lastEventId = ev.lastEventId;
    }
    try { onEvent({ type, id: ev.lastEventId || '', data: parse(ev.data), raw: ev.data }); }
    catch (e) { console.error(e); }
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
    esTicketExpiresAt = ticketExpiresAt;

    source.addEventListener('connected', (ev) => {
      attempt = 0;
      status('open', parse(ev.data));
    });
    for (const type of events) {
      if (type !== 'error') source.addEventListener(type, (ev) => emit(type, ev));
    }
    source.addEventListener('resync', (ev) => emit('resync', ev));
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
  };
}
