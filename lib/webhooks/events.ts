/**
 * Customer webhook events: what an account's endpoints can subscribe to, and the one way to emit
 * one (`emitEvent`): inside the atomic that commits its cause, so that the event exists if and
 * only if its cause does. Delivery (lib/webhooks/dispatcher.ts) takes it from there, at least once.
 */
import { newId } from "../ids.ts";
import { latestEventKey, webhookOutboxKey } from "../kv/schema.ts";
import { approxBytes } from "../kv/util.ts";
import type { LedgerEntry } from "../billing/types.ts";

/** The event types an endpoint subscribes to (API.md). */
export const EVENT_TYPES = [
  "balance.low",
  "key.limit_threshold",
  "auto_topup.succeeded",
  "auto_topup.failed",
  "credits.purchased",
  "credits.refunded",
] as const;
export type EventType = typeof EVENT_TYPES[number];

/** The test event's type: sent to one endpoint on request, whatever it subscribes to. */
export const TEST_EVENT = "webhook.test";

/** An event of an account, as committed to the webhook outbox. */
export interface AccountEvent {
  /** The `webhook-id` of every delivery of it: the same across retries and endpoints. */
  id: string;
  account_id: string;
  type: EventType | typeof TEST_EVENT;
  /** When it happened (ISO 8601): the body's `timestamp`. */
  timestamp: string;
  data: Record<string, unknown>;
}

/** How long an account's latest event of a type is kept for the dashboard. */
const LATEST_EVENT_MS = 30 * 86_400_000;

/** An event's data is small: a few ids and amounts (a bound on the atomics that carry it). */
export const MAX_EVENT_BYTES = 4096;

/**
 * A new event of the account, happening at `now`.
 *
 * @example
 * ```ts
 * const e = accountEvent("acct_1", "balance.low", { balance: "4.2", threshold: "5" }, Date.now());
 * e.id; // "msg_…"
 * ```
 */
export function accountEvent(
  accountId: string,
  type: AccountEvent["type"],
  data: Record<string, unknown>,
  now: number,
): AccountEvent {
  const event = {
    id: newId("msg", now),
    account_id: accountId,
    type,
    timestamp: new Date(now).toISOString(),
    data,
  };
  if (approxBytes(event) > MAX_EVENT_BYTES) throw new Error(`a ${type} event's data is too large`);
  return event;
}

/**
 * Emits `event` in `atomic`, the atomic that commits its cause: its outbox entry, and where KV
 * queues deliver (`delivery` "queue") a message naming it, so it is fanned out to the account's
 * endpoints at once; otherwise the background sweep finds it. The account's latest event of its
 * type is kept too (the dashboard's alerts read it). Adds three mutations at most.
 *
 * @example
 * ```ts
 * const atomic = kv.atomic().set(balanceKey(accountId), next);
 * emitEvent(atomic, accountEvent(accountId, "balance.low", data, now), "queue");
 * await atomic.commit();
 * ```
 */
export function emitEvent(
  atomic: Deno.AtomicOperation,
  event: AccountEvent,
  delivery: "queue" | "drainer",
): Deno.AtomicOperation {
  atomic.set(webhookOutboxKey(event.id), event);
  atomic.set(latestEventKey(event.account_id, event.type), event, { expireIn: LATEST_EVENT_MS });
  if (delivery === "queue") atomic.enqueue({ webhook_events: [event.id] });
  return atomic;
}

/** How a credit's ledger entry is shown in its event: as GET /v1/transactions shows it. */
export type EntryData = (entry: LedgerEntry) => Record<string, unknown>;

/**
 * The event of a credit (a `CreditOp`'s `event`): the ledger entry as `data` shows it (the API's
 * presenter, lib/http/presenters.ts `ledgerJson`), at the entry's time.
 *
 * @example
 * ```ts
 * actors.submit(accountId, { kind: "credit", …, event: creditEvent(accountId, "credits.purchased", ledgerJson) });
 * ```
 */
export const creditEvent =
  (accountId: string, type: EventType, data: EntryData) => (entry: LedgerEntry) =>
    accountEvent(accountId, type, data(entry), Date.parse(entry.created_at));

/** The account's latest event of `type` (kept 30 days), or null. */
export async function latestEvent(
  kv: Deno.Kv,
  accountId: string,
  type: EventType,
): Promise<AccountEvent | null> {
  return (await kv.get<AccountEvent>(latestEventKey(accountId, type))).value;
}
