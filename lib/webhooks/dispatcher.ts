/**
 * Delivers customer webhook events, at least once. An event committed to the webhook outbox
 * (`emitEvent`) is fanned out, in one atomic that deletes it, into one delivery record per
 * subscribed endpoint plus an entry in the due index. Each attempt first claims its delivery
 * (a lease, so that two processes do not send it at once and a process that dies mid-attempt
 * leaves it to the next sweep), then signs and sends it (Standard Webhooks), then records the
 * outcome and the next attempt: about 5 s, 30 s, 2 min, 10 min, 1 h, then hourly until 24 h after
 * the first. Where KV queues exist a delayed message wakes the retry; the sweep (Background's
 * timer, `Deno.cron`) runs whatever is due in any case.
 */
import { Webhook } from "standardwebhooks";
import { Conflict, TooManyRequests } from "../errors.ts";
import {
  WEBHOOK_OUTBOX_PREFIX,
  webhookDeliveryKey,
  webhookDueBy,
  webhookDueKey,
  webhookDueParts,
  webhookOutboxKey,
  webhookTestsKey,
} from "../kv/schema.ts";
import { commitRetrying, countInWindow, getAll } from "../kv/util.ts";
import type { Logger } from "../log.ts";
import {
  type AddressPolicy,
  type Destination,
  destination,
  resolveDns,
  type Resolver,
} from "./addresses.ts";
import { type AccountEvent, accountEvent, TEST_EVENT } from "./events.ts";
import { getEndpoint, getEndpoints, type WebhookEndpoint } from "./endpoints.ts";
import { PostError, postTo } from "./post.ts";

/**
 * Test events one endpoint may be sent a minute: each is delivered, and retried for a day, like
 * any event, so an unbounded button would be a way to flood an address with signed requests.
 */
export const TEST_EVENTS_PER_MINUTE = 10;

/** One event to one endpoint: its payload and the log of its attempts. */
export interface Delivery {
  webhook_id: string;
  account_id: string;
  endpoint_id: string;
  type: string;
  /** The body, `{type, timestamp, data}`, the same bytes at every attempt. */
  payload: string;
  created_ms: number;
  attempts: number;
  state: "pending" | "delivered" | "failed";
  /** The last attempt's HTTP status; null when it got none (see `last_error`). */
  last_status: number | null;
  /** Why the last attempt failed: `http_<status>`, `timeout`, `address_refused`… */
  last_error: string | null;
  latency_ms: number | null;
  delivered_at: string | null;
  /** While pending: when the next attempt is due (or the running attempt's lease ends). */
  due_ms: number | null;
}

/** The retry delays after each failed attempt, in units of `retryBaseMs` (seconds). */
export const RETRY_SCHEDULE = [5, 30, 120, 600, 3600] as const;
/** After the schedule, one attempt an hour, until this long after the first attempt. */
const HOURLY = 3600;
const RETRY_WINDOW = 86_400;
/** How long delivery records are kept, from their last change. */
const DELIVERY_TTL_MS = 30 * 86_400_000;
/** A claimed attempt is its process's for its timeout and this much more. */
const LEASE_MARGIN_MS = 30_000;
/** Attempts run at once by one sweep or fan-out. */
const PARALLEL = 8;
/** Entries a sweep takes per pass, and passes per sweep. */
const PAGE = 200;
const PASSES = 50;

export interface WebhookOptions {
  delivery: "queue" | "drainer";
  policy: AddressPolicy;
  now: () => number;
  log: Logger;
  /** Resolves endpoint host names (tests stand in for DNS). */
  resolve?: Resolver;
  /** Root certificates trusted beside the system's (tests). */
  caCerts?: string[];
  /** The retry schedule's unit: 1000 (seconds); tests shorten it. */
  retryBaseMs?: number;
  /** The bound of one attempt: connecting, sending, reading the status. */
  timeoutMs?: number;
}

/**
 * When the next attempt after `attempts` of a delivery first made at `createdMs` is due, or null
 * when it would fall outside the retry window (the delivery has failed).
 *
 * @example
 * ```ts
 * nextAttemptMs(0, 1, 0, 1000); // 5000
 * nextAttemptMs(0, 6, 4_355_000, 1000); // 7_955_000 (hourly)
 * ```
 */
export function nextAttemptMs(
  createdMs: number,
  attempts: number,
  now: number,
  baseMs: number,
): number | null {
  const at = now + (RETRY_SCHEDULE[attempts - 1] ?? HOURLY) * baseMs;
  return at - createdMs <= RETRY_WINDOW * baseMs ? at : null;
}

type DeliveryRef = readonly [accountId: string, endpointId: string, eventId: string];
/** A delivery to attempt, with the due entry that names it. */
interface Due {
  ref: DeliveryRef;
  dueMs: number;
}

const isRef = (v: unknown): v is DeliveryRef =>
  Array.isArray(v) && v.length === 3 && v.every((x) => typeof x === "string");

const encoder = new TextEncoder();

/** The customer webhooks' delivery: fan-out, attempts, retries. */
export class Webhooks {
  #kv: Deno.Kv;
  #opts: Required<Omit<WebhookOptions, "caCerts">> & Pick<WebhookOptions, "caCerts">;
  /** Deliveries this process is attempting: a second trigger of one waits for nothing. */
  #running = new Set<string>();

  constructor(kv: Deno.Kv, opts: WebhookOptions) {
    this.#kv = kv;
    this.#opts = {
      ...opts,
      resolve: opts.resolve ?? resolveDns,
      retryBaseMs: opts.retryBaseMs ?? 1000,
      timeoutMs: opts.timeoutMs ?? 10_000,
    };
  }

  /** Where `url` may be delivered under this router's policy (checked again at each attempt). */
  destination(url: URL): Promise<Destination> {
    const signal = AbortSignal.timeout(this.#opts.timeoutMs);
    return destination(url, this.#opts.policy, this.#opts.resolve, signal);
  }

  /** Handles a queue message of the webhooks; false for any other message. */
  async onMessage(msg: unknown): Promise<boolean> {
    const m = msg as { webhook_events?: unknown; webhook_delivery?: unknown } | null;
    if (Array.isArray(m?.webhook_events)) {
      const ids = m.webhook_events.filter((x): x is string => typeof x === "string");
      await this.#fanOut(ids);
      return true;
    }
    if (m && "webhook_delivery" in m) {
      if (isRef(m.webhook_delivery)) await this.#run(m.webhook_delivery, null);
      return true;
    }
    return false;
  }

  /** Fans out every event in the outbox and runs every delivery that is due. */
  async sweep(): Promise<void> {
    for (let pass = 0; pass < PASSES; pass++) {
      const ids: string[] = [];
      for await (
        const e of this.#kv.list<AccountEvent>({ prefix: WEBHOOK_OUTBOX_PREFIX }, { limit: PAGE })
      ) ids.push(e.value.id);
      if (ids.length === 0) break;
      await this.#fanOut(ids);
      if (ids.length < PAGE) break;
    }
    for (let pass = 0; pass < PASSES; pass++) {
      const due: Due[] = [];
      for await (const e of this.#kv.list(webhookDueBy(this.#opts.now()), { limit: PAGE })) {
        const { dueMs, accountId, endpointId, eventId } = webhookDueParts(e.key);
        due.push({ ref: [accountId, endpointId, eventId], dueMs });
      }
      if (due.length === 0) break;
      await this.#runAll(due);
      if (due.length < PAGE) break;
    }
  }

  /**
   * Sends a `webhook.test` event to one endpoint now; resolves with its delivery after the first
   * attempt (retried as any other when it failed). More than `TEST_EVENTS_PER_MINUTE` in one
   * minute to one endpoint: `TooManyRequests`.
   */
  async test(accountId: string, endpoint: WebhookEndpoint): Promise<Delivery> {
    const now = this.#opts.now();
    const event = accountEvent(accountId, TEST_EVENT, {
      endpoint_id: endpoint.id,
      message: "A test event: your endpoint receives and verifies Enterprise Router's webhooks",
    }, now);
    const minute = Math.floor(now / 60_000);
    const counted = await countInWindow(
      this.#kv,
      webhookTestsKey(accountId, endpoint.id, minute),
      TEST_EVENTS_PER_MINUTE,
      120_000,
      { also: (atomic) => this.#schedule(atomic, event, endpoint.id, now), attempts: 20 },
    );
    if (counted === "over") {
      throw new TooManyRequests(
        `At most ${TEST_EVENTS_PER_MINUTE} test events a minute go to one webhook endpoint`,
        Math.max(1, Math.ceil(((minute + 1) * 60_000 - now) / 1000)),
      );
    }
    if (counted === "contended") throw new Conflict("Too many test events at once; retry");
    const ref = [accountId, endpoint.id, event.id] as const;
    await this.#run(ref, now);
    return (await this.#kv.get<Delivery>(webhookDeliveryKey(...ref))).value!;
  }

  /** Writes a new delivery of `event` to one endpoint, due at once. */
  #schedule(atomic: Deno.AtomicOperation, event: AccountEvent, endpointId: string, now: number) {
    const delivery: Delivery = {
      webhook_id: event.id,
      account_id: event.account_id,
      endpoint_id: endpointId,
      type: event.type,
      payload: JSON.stringify({ type: event.type, timestamp: event.timestamp, data: event.data }),
      created_ms: now,
      attempts: 0,
      state: "pending",
      last_status: null,
      last_error: null,
      latency_ms: null,
      delivered_at: null,
      due_ms: now,
    };
    const key = webhookDeliveryKey(event.account_id, endpointId, event.id);
    atomic.check({ key, versionstamp: null })
      .set(key, delivery, { expireIn: DELIVERY_TTL_MS })
      .set(webhookDueKey(now, event.account_id, endpointId, event.id), null);
  }

  /**
   * Turns outbox events into deliveries to the endpoints subscribed to them, each event in one
   * atomic that deletes it (a second fan-out finds nothing), then attempts them.
   */
  async #fanOut(ids: string[]) {
    const entries = await getAll<AccountEvent>(this.#kv, ids.map(webhookOutboxKey));
    const created: Due[] = [];
    for (const entry of entries) {
      const event = entry.value;
      if (event === null) continue;
      const endpoints = (await getEndpoints(this.#kv, event.account_id)).value ?? [];
      const targets = endpoints.filter((e) =>
        !e.disabled && (e.events as string[]).includes(event.type)
      );
      const now = this.#opts.now();
      const atomic = this.#kv.atomic().check(entry).delete(entry.key);
      for (const e of targets) this.#schedule(atomic, event, e.id, now);
      if ((await commitRetrying(atomic)).ok) {
        for (const e of targets) {
          created.push({ ref: [event.account_id, e.id, event.id], dueMs: now });
        }
      }
    }
    await this.#runAll(created);
  }

  /** Runs deliveries, PARALLEL at a time. */
  async #runAll(due: Due[]) {
    let next = 0;
    const worker = async () => {
      while (next < due.length) {
        const { ref, dueMs } = due[next++];
        await this.#run(ref, dueMs);
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, due.length) }, worker));
  }

  /**
   * One attempt of a delivery, if it is pending, due and not another's right now. `dueMs` is the
   * due entry that led here, when known (a queue message names none).
   */
  async #run(ref: DeliveryRef, dueMs: number | null) {
    const id = ref.join("/");
    if (this.#running.has(id)) return;
    this.#running.add(id);
    try {
      await this.#attempt(ref, dueMs);
    } catch (e) {
      // The delivery stays due: the next sweep tries again.
      this.#opts.log("error", "webhook attempt failed", {
        webhook_id: ref[2],
        error: e instanceof Error ? e.name : "unknown",
      });
    } finally {
      this.#running.delete(id);
    }
  }

  async #attempt(ref: DeliveryRef, dueMs: number | null) {
    const [accountId, endpointId, eventId] = ref;
    const { now, timeoutMs } = this.#opts;
    const key = webhookDeliveryKey(accountId, endpointId, eventId);
    const entry = await this.#kv.get<Delivery>(key);
    const d = entry.value;
    const start = now();
    if (!d || d.state !== "pending" || (dueMs !== null && d.due_ms !== dueMs)) {
      // A due entry its delivery has moved past (or whose record expired): nothing left to do,
      // and it goes, unless the delivery changed meanwhile.
      if (dueMs !== null) {
        await this.#kv.atomic().check(entry).delete(webhookDueKey(dueMs, ...ref)).commit();
      }
      return;
    }
    // Not due yet: a message early, or another process's attempt under way.
    if (d.due_ms === null || d.due_ms > start) return;
    const endpoint = await getEndpoint(this.#kv, accountId, endpointId);
    if (!endpoint || endpoint.disabled) {
      // Deleted or disabled since: the delivery ends here, logged.
      await this.#finish(entry as Deno.KvEntry<Delivery>, d.due_ms, {
        ...d,
        state: "failed",
        last_error: endpoint ? "endpoint_disabled" : "endpoint_deleted",
        due_ms: null,
      });
      return;
    }
    // The lease: the delivery is due again when it ends, should this process die meanwhile.
    const leaseEnd = start + timeoutMs + LEASE_MARGIN_MS;
    const leased: Delivery = { ...d, due_ms: leaseEnd };
    const claim = await commitRetrying(
      this.#kv.atomic().check(entry)
        .set(key, leased, { expireIn: DELIVERY_TTL_MS })
        .delete(webhookDueKey(d.due_ms, ...ref))
        .set(webhookDueKey(leaseEnd, ...ref), null),
    );
    if (!claim.ok) return;

    const { status, error } = await this.#send(endpoint, d);
    const done = now();
    const attempts = d.attempts + 1;
    const ok = status !== null && status >= 200 && status < 300;
    const next = ok ? null : nextAttemptMs(d.created_ms, attempts, done, this.#opts.retryBaseMs);
    const outcome: Delivery = {
      ...d,
      attempts,
      state: ok ? "delivered" : next === null ? "failed" : "pending",
      last_status: status,
      last_error: ok ? null : error ?? `http_${status}`,
      latency_ms: done - start,
      delivered_at: ok ? new Date(done).toISOString() : null,
      due_ms: next,
    };
    // Checked against the claim: if the lease ran out and another process took over, its
    // outcome stands.
    await this.#finish({ key, value: leased, versionstamp: claim.versionstamp }, leaseEnd, outcome);
    this.#opts.log(ok ? "info" : "warn", ok ? "webhook delivered" : "webhook attempt failed", {
      account_id: accountId,
      endpoint_id: endpointId,
      webhook_id: eventId,
      type: d.type,
      attempt: attempts,
      status,
      error: outcome.last_error,
      latency_ms: outcome.latency_ms,
      next_attempt_at: outcome.state === "pending" && next !== null
        ? new Date(next).toISOString()
        : null,
    });
  }

  /**
   * Stores a delivery's new state in place of `entry` (whose due entry is at `dueMs`): its next
   * due entry and, where queues exist, a message delayed until then.
   */
  async #finish(entry: Deno.KvEntry<Delivery>, dueMs: number, d: Delivery) {
    const ref = [d.account_id, d.endpoint_id, d.webhook_id] as const;
    const atomic = this.#kv.atomic().check(entry)
      .set(entry.key, d, { expireIn: DELIVERY_TTL_MS })
      .delete(webhookDueKey(dueMs, ...ref));
    if (d.state === "pending" && d.due_ms !== null) {
      atomic.set(webhookDueKey(d.due_ms, ...ref), null);
      if (this.#opts.delivery === "queue") {
        const delay = Math.max(0, d.due_ms - this.#opts.now());
        atomic.enqueue({ webhook_delivery: ref }, { delay });
      }
    }
    await commitRetrying(atomic);
  }

  /** Signs and sends one attempt; the HTTP status, or why there is none. */
  async #send(
    endpoint: WebhookEndpoint,
    d: Delivery,
  ): Promise<{ status: number | null; error: string | null }> {
    const url = new URL(endpoint.url);
    // Checked now, not only when the endpoint was saved: DNS may answer differently today.
    const dest = await this.destination(url);
    if (!dest.ok) return { status: null, error: dest.reason };
    const now = new Date(this.#opts.now());
    const body = encoder.encode(d.payload);
    const headers = {
      "Content-Type": "application/json",
      "User-Agent": "EnterpriseRouter-Webhooks/1",
      "webhook-id": d.webhook_id,
      "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
      "webhook-signature": new Webhook(endpoint.secret).sign(d.webhook_id, now, body),
    };
    try {
      const status = await postTo(url, dest.addresses, headers, body, {
        timeoutMs: this.#opts.timeoutMs,
        caCerts: this.#opts.caCerts,
      });
      return { status, error: null };
    } catch (e) {
      if (e instanceof PostError) return { status: null, error: e.code };
      throw e;
    }
  }
}
