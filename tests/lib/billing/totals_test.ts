import assert from "node:assert/strict";
import { json, startRouter } from "../../_helpers.ts";
import { entries, populateBooks } from "../../_books.ts";
import { verifyBooks } from "../../../lib/billing/accounts.ts";
import { backfillLedgerTotals, ledgerTotals, sumLedger } from "../../../lib/billing/totals.ts";
import {
  ledgerKey,
  ledgerPrefix,
  ledgerTotalKey,
  ledgerTotalsCompleteKey,
} from "../../../lib/kv/schema.ts";
import type { LedgerEntry } from "../../../lib/billing/types.ts";

const u64 = async (kv: Deno.Kv, key: Deno.KvKey) =>
  ((await kv.get<Deno.KvU64>(key)).value?.value) ?? 0n;

Deno.test("every ledger row adds to its account's totals: credits and debits equal its rows'", async () => {
  const t = await startRouter();
  try {
    const { accounts } = await populateBooks(t);
    for (const { id } of accounts) {
      const rows = (await entries(t.kv, ledgerPrefix(id))).map((e) => (e.value as LedgerEntry));
      assert.ok(rows.some((r) => r.type === "usage_debit") && rows.some((r) => r.amount > 0n));
      const credits = rows.filter((r) => r.amount > 0n).reduce((s, r) => s + r.amount, 0n);
      const debits = rows.filter((r) => r.amount < 0n).reduce((s, r) => s - r.amount, 0n);
      assert.equal(await u64(t.kv, ledgerTotalKey(id, "credit")), credits, "Σ credits");
      assert.equal(await u64(t.kv, ledgerTotalKey(id, "debit")), debits, "Σ debits");
      assert.deepEqual(await ledgerTotals(t.kv, [id]), [credits - debits]);
    }
    assert.equal((await verifyBooks(t.kv, { scan: true })).ok, true);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("GET /v1/admin/verify reads an account's ledger totals, and its rows only without them", async () => {
  const t = await startRouter();
  try {
    const acct = await t.account("2");
    // A row no writer counted (the balance unchanged): the totals still agree with the balance.
    const stray: LedgerEntry = {
      id: "txn_stray",
      type: "adjustment",
      amount: 1n,
      balance_after: 0n,
      created_at: new Date().toISOString(),
      description: "stray",
      reference: null,
    };
    await t.kv.set(ledgerKey(acct.id, Date.now(), stray.id), stray);
    const trusted = await json(await t.admin("GET", "/v1/admin/verify"), 200);
    assert.equal(trusted.ok, true, "the totals are read, not the rows");
    const scanned = await verifyBooks(t.kv, { scan: true });
    assert.equal(scanned.ok, false);
    assert.deepEqual(scanned.differences.map((d) => [d.ledger_sum, d.ledger_totals]), [
      [2_000_000_001n, 2_000_000_000n],
    ]);
    // Without the "complete" mark the totals are not trusted: the rows are summed.
    await t.kv.delete(ledgerTotalsCompleteKey(acct.id));
    const summed = await json(await t.admin("GET", "/v1/admin/verify"), 200);
    assert.equal(summed.ok, false);
    assert.deepEqual(summed.differences.map((d: { ledger_sum: string }) => d.ledger_sum), [
      "2.000000001",
    ]);
  } finally {
    await t.close();
  }
});

Deno.test("an account whose totals disagree with its balance is judged by its rows", async () => {
  const t = await startRouter();
  try {
    const acct = await t.account("2");
    await t.kv.atomic().sum(ledgerTotalKey(acct.id, "credit"), 5n).commit();
    assert.equal((await verifyBooks(t.kv)).ok, true, "the rows agree with the balance");
    const scanned = await verifyBooks(t.kv, { scan: true });
    assert.deepEqual(scanned.differences.map((d) => d.ledger_totals), [2_000_000_005n]);
  } finally {
    await t.close();
  }
});

Deno.test("a back-fill is exact when a ledger row is written between its sum and its commit", async () => {
  const t = await startRouter();
  try {
    const acct = await t.account("2");
    await json(
      await t.admin("POST", `/v1/admin/accounts/${acct.id}/adjustments`, {
        amount: "-0.5",
        reason: "before",
      }),
      201,
    );
    // The account as the previous schema left it: rows, no totals.
    await t.kv.atomic().delete(ledgerTotalsCompleteKey(acct.id))
      .delete(ledgerTotalKey(acct.id, "credit")).delete(ledgerTotalKey(acct.id, "debit")).commit();
    let raced = 0;
    // The back-fill's KV: its first commit waits for an adjustment made through the router.
    const racing = new Proxy(t.kv, {
      get(target, prop) {
        if (prop === "atomic") {
          return () => {
            const atomic = target.atomic();
            const commit = atomic.commit.bind(atomic);
            atomic.commit = async () => {
              if (raced++ === 0) {
                await json(
                  await t.admin("POST", `/v1/admin/accounts/${acct.id}/adjustments`, {
                    amount: "0.25",
                    reason: "meanwhile",
                  }),
                  201,
                );
              }
              return await commit();
            };
            return atomic;
          };
        }
        const v = Reflect.get(target, prop);
        return typeof v === "function" ? v.bind(target) : v;
      },
    });
    assert.equal(await backfillLedgerTotals(racing, acct.id, Date.now()), true);
    assert.equal(raced, 2, "the first commit failed its check; the second one summed again");
    assert.deepEqual(await ledgerTotals(t.kv, [acct.id]), [await sumLedger(t.kv, acct.id)]);
    assert.equal(await sumLedger(t.kv, acct.id), 1_750_000_000n);
    assert.equal(await backfillLedgerTotals(t.kv, acct.id, Date.now()), false, "done once");
    assert.equal((await verifyBooks(t.kv, { scan: true })).ok, true);
  } finally {
    await t.close();
  }
});
