import { listAccounts } from "../billing/accounts.ts";
import { rollupPrefix } from "../kv/schema.ts";
import { queryUsage } from "./query.ts";
import { DAY_MS, type GroupBy } from "./period.ts";

/** How far back the warm-up reaches: the longest period the dashboard offers. */
const WARM_DAYS = 90;
const GROUPINGS: GroupBy[] = ["date", "key", "provider", "model"];

/** One key's groupings that read digests of their own (its date rows read the account's by-key). */
const KEY_GROUPINGS: GroupBy[] = ["provider", "model"];

/**
 * Builds the usage digests of every account's closed days (and closed months) of the last 90 days,
 * by running the dashboard's queries over them once: the account's, and those of each key that
 * was used in the period. Run after midnight UTC, so a customer's first view of a period reads
 * digests instead of scanning every counter of it; after the first night each run digests only
 * the day that closed.
 */
export async function warmUsageDigests(kv: Deno.Kv, now: number): Promise<number> {
  const today = Math.floor(now / DAY_MS) * DAY_MS;
  const fromMs = today - WARM_DAYS * DAY_MS;
  let accounts = 0;
  for (const { account } of await listAccounts(kv)) {
    // An account without usage counters has nothing to digest.
    const [any] = await Array.fromAsync(
      kv.list({ prefix: rollupPrefix(account.id) }, { limit: 1 }),
    );
    if (!any) continue;
    const keyIds: string[] = [];
    for (const groupBy of GROUPINGS) {
      const r = await queryUsage(kv, { accountId: account.id, fromMs, toMs: today, groupBy, now });
      if (groupBy === "key") keyIds.push(...r.breakdown.map(([group]) => group));
    }
    for (const keyId of keyIds) {
      for (const groupBy of KEY_GROUPINGS) {
        await queryUsage(kv, { accountId: account.id, fromMs, toMs: today, groupBy, keyId, now });
      }
    }
    accounts++;
  }
  return accounts;
}
