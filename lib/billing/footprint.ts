/** How much of one atomic an account's batch of operations takes (see `decide`). */
import { approxBytes, keyBytes } from "../kv/util.ts";
import { addFootprint, type AtomicRoom, emptyFootprint, type Footprint } from "../kv/limits.ts";
import type { Op } from "./ops.ts";
import { MAX_EVENT_BYTES } from "../webhooks/events.ts";
import { MAX_LEASE_KEYS } from "./lease.ts";

// Upper bounds of stored sizes, beyond their keys: a balance, a key's spend with its rate window,
// a hold, a ledger entry without its description, a once-value.
const BALANCE_BYTES = 256;
const SPEND_BYTES = 2048;
const HOLD_BYTES = 256;
const LEDGER_BYTES = 512;
const ONCE_BYTES = 4096;
// A lease with its keys (each a delta and a slice), at most MAX_LEASE_KEYS of them.
const LEASE_BYTES = 512 + MAX_LEASE_KEYS * 512;
/** The most operations of one account in one atomic. */
export const MAX_OPS = 256;

/**
 * What one operation adds, given the key ids already in the batch (it adds its own); `keyId`: a
 * key the operation reads besides its own.
 */
function opFootprint(op: Op, accountBytes: number, keys: Set<string>, keyId?: string): Footprint {
  const f = emptyFootprint();
  const id = keyId ?? ("keyId" in op ? op.keyId : null);
  if (id !== null && !keys.has(id)) {
    // The key is checked; its spend checked and set.
    f.checks += 2;
    f.mutations += 1;
    f.keyBytes += 3 * (16 + id.length * 3 + accountBytes);
    f.bytes += SPEND_BYTES;
  }
  const holdKeyBytes = "holdId" in op ? 12 + accountBytes + op.holdId.length * 3 : 0;
  switch (op.kind) {
    case "reserve":
      f.mutations += 1;
      f.keyBytes += holdKeyBytes;
      f.bytes += HOLD_BYTES;
      break;
    case "settle":
    case "release":
    case "expire":
      f.checks += 1;
      f.mutations += 1;
      f.keyBytes += 2 * holdKeyBytes;
      break;
    case "renew":
      f.checks += 1;
      f.mutations += 1;
      f.keyBytes += 2 * holdKeyBytes;
      f.bytes += HOLD_BYTES;
      break;
    case "reclaim":
      // The lease checked and deleted; its keys checked and their spends set.
      f.checks += 1 + 2 * op.keyIds.length;
      f.mutations += 1 + op.keyIds.length;
      f.keyBytes += 2 * (16 + accountBytes + op.leaseId.length * 3) +
        op.keyIds.length * 3 * (16 + 24 * 3 + accountBytes);
      f.bytes += op.keyIds.length * SPEND_BYTES;
      break;
    case "credit":
      // The ledger row and its account's total.
      f.mutations += 2;
      f.keyBytes += 2 * (64 + accountBytes);
      f.bytes += LEDGER_BYTES + op.description.length * 3 + (op.reference?.length ?? 0) * 3 +
        (op.receipt_url?.length ?? 0) * 3;
      if (op.event) {
        // Its outbox entry and its queue message.
        f.mutations += 2;
        f.keyBytes += 96;
        f.bytes += 2 * MAX_EVENT_BYTES;
      }
      if (op.once) {
        f.checks += 1;
        f.mutations += 1;
        f.keyBytes += 2 * keyBytes(op.once.key);
        f.bytes += ONCE_BYTES;
      }
      break;
  }
  const event = op.kind === "settle" || op.kind === "record" || op.kind === "release"
    ? op.event
    : null;
  if (event) {
    f.mutations += 1;
    f.keyBytes += 16 + event.id.length * 3;
    f.bytes += approxBytes(event);
  }
  f.bytes += f.keyBytes;
  return f;
}

/**
 * How many operations at the head of an account's queue fit in the room left (and takes them): the
 * longest prefix, at most MAX_OPS. The first part of an atomic takes at least one operation.
 * `leaseKeys`: the key ids of this process's lease on the account (null without one), whose
 * spends a fold writes.
 */
export function fitBatch(
  accountId: string,
  queue: readonly { op: Op }[],
  room: AtomicRoom,
  first: boolean,
  leaseKeys: Iterable<string> | null,
): number {
  const accountBytes = accountId.length * 3;
  // The balance and this process's lease (one may be taken): checked and set.
  const total: Footprint = {
    checks: 2,
    mutations: 2,
    keyBytes: 4 * (40 + accountBytes),
    bytes: BALANCE_BYTES + LEASE_BYTES,
  };
  const keys = new Set<string>();
  for (const id of leaseKeys ?? []) {
    addFootprint(total, opFootprint({ kind: "lease", action: "sync" }, accountBytes, keys, id));
    keys.add(id);
  }
  let n = 0;
  for (; n < queue.length && n < MAX_OPS; n++) {
    const op = queue[n].op;
    const f = opFootprint(op, accountBytes, keys);
    const after = addFootprint({ ...total }, f);
    if (!room.fits(after) && !(first && n === 0)) break;
    if ("keyId" in op) keys.add(op.keyId);
    addFootprint(total, f);
  }
  if (n === 0) return 0;
  room.take(total);
  return n;
}
