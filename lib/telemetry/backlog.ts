/**
 * What the metrics read from KV when they are collected: the outboxes' backlog and the holds
 * outstanding, across every process on the KV. Each read is a scan capped at `SCAN_CAP` entries,
 * so a scrape costs at most that many entries read whatever the backlog; a figure at the cap
 * means "at least this many".
 */
import { HOLD_PREFIX, LEASE_PREFIX, OUTBOX_PREFIX, WEBHOOK_OUTBOX_PREFIX } from "../kv/schema.ts";
import { idTime } from "../ids.ts";
import type { Hold, Lease } from "../billing/types.ts";

/** The most entries one read lists. */
const SCAN_CAP = 1000;

/** The outboxes: usage events waiting to be recorded, customer webhook events to fan out. */
export const OUTBOXES = { usage: OUTBOX_PREFIX, webhooks: WEBHOOK_OUTBOX_PREFIX } as const;

/** An outbox's entries (up to `SCAN_CAP`) and the age of its oldest, in seconds (0 when empty). */
export async function outboxBacklog(
  kv: Deno.Kv,
  prefix: Deno.KvKey,
  now: number,
): Promise<{ entries: number; oldestAgeS: number }> {
  let entries = 0;
  let oldest: number | null = null;
  // Keys end in time-ordered event ids: the first listed is the oldest.
  for await (const e of kv.list({ prefix }, { limit: SCAN_CAP })) {
    if (entries++ === 0) oldest = idTime(String(e.key[e.key.length - 1]));
  }
  return { entries, oldestAgeS: oldest === null ? 0 : Math.max(0, now - oldest) / 1000 };
}

/**
 * Holds written to KV (the shared path; up to `SCAN_CAP`) with their amount, and the amount the
 * balance leases hold for their owners' requests (as last committed; up to `SCAN_CAP` leases).
 */
export async function holdsOutstanding(
  kv: Deno.Kv,
): Promise<{ holds: number; held: bigint; leaseHeld: bigint }> {
  let holds = 0;
  let held = 0n;
  for await (const e of kv.list<Hold>({ prefix: HOLD_PREFIX }, { limit: SCAN_CAP })) {
    holds++;
    held += e.value.amount;
  }
  let leaseHeld = 0n;
  for await (const e of kv.list<Lease>({ prefix: LEASE_PREFIX }, { limit: SCAN_CAP })) {
    leaseHeld += e.value.held;
  }
  return { holds, held, leaseHeld };
}
