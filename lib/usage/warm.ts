import { listAccounts } from "../billing/accounts.ts";
import { DAY_MS, type GroupBy, queryUsage } from "./query.ts";

/** How far back the warm-up reaches: the longest period the dashboard offers. */
const WARM_DAYS = 90;
const GROUPINGS: GroupBy[] = ["date", "key", "provider", "model"];

/**
 * Builds the usage digests of every account's closed days (and closed months) of the last 90 days,
 * by running the dashboard's queries over them once. Run after midnight UTC, so a customer's first
 * view of a period reads digests instead of scanning every counter of it.
 */
export async function warmUsageDigests(kv: Deno.Kv, now = Date.now()): Promise<number> {
  const today = Math.floor(now / DAY_MS) * DAY_MS;
  const fromMs = today - WARM_DAYS * DAY_MS;
  let accounts = 0;
  for (const { account } of await listAccounts(kv)) {
    // An account without usage counters has nothing to digest.
    const [any] = await Array.fromAsync(kv.list({ prefix: ["rollup", account.id] }, { limit: 1 }));
    if (!any) continue;
    for (const groupBy of GROUPINGS) {
      await queryUsage(kv, { accountId: account.id, fromMs, toMs: today, groupBy, now });
    }
    accounts++;
  }
  return accounts;
}
