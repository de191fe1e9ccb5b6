/** An account's webhook endpoints: one KV record per account, changed by check-and-set. */
import { webhooksKey } from "../kv/schema.ts";
import { commitRetrying } from "../kv/util.ts";
import { Conflict } from "../errors.ts";
import type { EventType } from "./events.ts";

export interface WebhookEndpoint {
  id: string;
  url: string;
  events: EventType[];
  /** The signing secret (`whsec_` + base64 of 32 random bytes), shown to the customer once. */
  secret: string;
  disabled: boolean;
  created_at: string;
  updated_at: string;
}

/** The most endpoints an account may have (each event is delivered to each of them). */
export const MAX_ENDPOINTS = 10;
/** The longest endpoint URL accepted. */
export const MAX_URL_CHARS = 2048;

/**
 * The account's endpoints with the record's versionstamp.
 *
 * @example
 * ```ts
 * const list = (await getEndpoints(kv, accountId)).value ?? [];
 * ```
 */
export async function getEndpoints(
  kv: Deno.Kv,
  accountId: string,
): Promise<Deno.KvEntryMaybe<WebhookEndpoint[]>> {
  return await kv.get<WebhookEndpoint[]>(webhooksKey(accountId));
}

/**
 * One endpoint of the account, or null.
 *
 * @example
 * ```ts
 * const e = await getEndpoint(kv, accountId, "we_01m9…"); // null when there is none
 * ```
 */
export async function getEndpoint(
  kv: Deno.Kv,
  accountId: string,
  id: string,
): Promise<WebhookEndpoint | null> {
  return (await getEndpoints(kv, accountId)).value?.find((e) => e.id === id) ?? null;
}

/**
 * Replaces the account's endpoints with `change(current)`, checked against concurrent changes
 * (re-run on the fresh list when one lands first); `change` throws to refuse.
 *
 * @example
 * ```ts
 * await changeEndpoints(kv, accountId, (list) => list.filter((e) => e.id !== id));
 * ```
 */
export async function changeEndpoints(
  kv: Deno.Kv,
  accountId: string,
  change: (current: WebhookEndpoint[]) => WebhookEndpoint[],
): Promise<WebhookEndpoint[]> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const entry = await getEndpoints(kv, accountId);
    const next = change(entry.value ?? []);
    const atomic = kv.atomic().check(entry);
    if (next.length) atomic.set(entry.key, next);
    else atomic.delete(entry.key);
    if ((await commitRetrying(atomic)).ok) return next;
  }
  throw new Conflict("The webhooks changed while they were being updated; retry");
}

/** A new signing secret in the Standard Webhooks form. */
export function newSecret(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return "whsec_" + btoa(String.fromCharCode(...bytes));
}
