import assert from "node:assert/strict";
import {
  accountIdOfKey,
  accountKey,
  accountKeyIndex,
  accountKeysPrefix,
  auditIdKey,
  auditKey,
  auditKeyParts,
  auditRange,
  bucketOfDigest,
  disputeIdOfKey,
  holdKey,
  keyIdOfIndex,
  ledgerKey,
  ledgerRange,
  monthOfStatementClose,
  requestIdOfAuditId,
  rollupDigestKey,
  rollupDigestRange,
  rollupKey,
  rollupKeyParts,
  rollupPendingAfter,
  rollupPendingKey,
  rollupRange,
  statementCloseKey,
  statementClosesBefore,
  stripeDisputeKey,
  webhookDueBy,
  webhookDueKey,
  webhookDueParts,
} from "../../../lib/kv/schema.ts";

Deno.test("schema decoders read back what their builders wrote", () => {
  for (
    const key of [accountKey("acct_1"), holdKey("acct_1", "h"), rollupPendingKey("acct_1", "p")]
  ) {
    assert.equal(accountIdOfKey(key), "acct_1");
  }
  assert.equal(keyIdOfIndex(accountKeyIndex("acct_1", "key_3")), "key_3");
  assert.deepEqual(auditKeyParts(auditKey("acct_1", 42, "req_4")), { ms: 42, requestId: "req_4" });
  assert.equal(requestIdOfAuditId(auditIdKey("acct_1", "req_4.2")), "req_4.2");
  assert.deepEqual(
    rollupKeyParts(rollupKey("acct_1", "d", "", "model", "2026-11-26", "m", "cost")),
    {
      bucket: "2026-11-26",
      value: "m",
      field: "cost",
    },
  );
  assert.equal(bucketOfDigest(rollupDigestKey("acct_1", "m", "", "key", "2026-11")), "2026-11");
  assert.equal(disputeIdOfKey(stripeDisputeKey("pi_1", "dp_2")), "dp_2");
  assert.deepEqual(webhookDueParts(webhookDueKey(7, "acct_1", "we_2", "msg_3")), {
    dueMs: 7,
    accountId: "acct_1",
    endpointId: "we_2",
    eventId: "msg_3",
  });
  assert.equal(monthOfStatementClose(statementCloseKey("acct_1", "2026-10")), "2026-10");
});

/** The keys of `written` a listing of `selector` returns, in order. */
async function listed(written: Deno.KvKey[], selector: Deno.KvListSelector) {
  await using kv = await Deno.openKv(":memory:");
  for (const k of written) await kv.set(k, 0);
  return (await Array.fromAsync(kv.list(selector))).map((e) => e.key);
}

Deno.test("schema ranges hold exactly their keys: by time, by bucket, by account", async () => {
  const audit = [auditKey("a", 9, "r"), auditKey("a", 10, "r"), auditKey("a", 19, "r")];
  assert.deepEqual(
    await listed(
      [...audit, auditKey("a", 20, "r"), auditKey("b", 10, "r")],
      auditRange("a", 10, 20),
    ),
    audit.slice(1),
  );
  const ledger = [ledgerKey("a", 1, "x"), ledgerKey("a", 5, "y"), ledgerKey("a", 9, "z")];
  assert.deepEqual(await listed([...ledger, ledgerKey("b", 1, "x")], ledgerRange("a", null, 9)), [
    ledger[0],
    ledger[1],
  ]);
  assert.deepEqual(await listed(ledger, ledgerRange("a", 5, 10)), ledger.slice(1));
  const day = (d: string, v: string) => rollupKey("a", "d", "", "model", d, v, "cost");
  const days = [day("2026-11-02", "m"), day("2026-11-03", "m"), day("2026-11-03", "n")];
  assert.deepEqual(
    await listed(
      [day("2026-11-01", "m"), ...days, day("2026-11-04", "m")],
      rollupRange("a", "d", "", "model", "2026-11-02", "2026-11-03"),
    ),
    days,
  );
  const digest = (b: string) => rollupDigestKey("a", "d", "", "model", b);
  assert.deepEqual(
    await listed(
      [digest("2026-11-01"), digest("2026-11-02"), digest("2026-11-03")],
      rollupDigestRange("a", "d", "", "model", "2026-11-02", "2026-11-02"),
    ),
    [digest("2026-11-02")],
  );
  assert.deepEqual(
    await listed(
      [rollupPendingKey("a", "1"), rollupPendingKey("ab", "1"), rollupPendingKey("b", "1")],
      { prefix: ["rollup_pending"], start: rollupPendingAfter("a") },
    ),
    [rollupPendingKey("ab", "1"), rollupPendingKey("b", "1")],
  );
  assert.deepEqual(
    await listed(
      [webhookDueKey(5, "a", "e", "m"), webhookDueKey(6, "a", "e", "m")],
      webhookDueBy(5),
    ),
    [webhookDueKey(5, "a", "e", "m")],
  );
  assert.deepEqual(
    await listed(
      [statementCloseKey("a", "2026-09"), statementCloseKey("a", "2026-10"), accountKey("a")],
      statementClosesBefore("a", "2026-10"),
    ),
    [statementCloseKey("a", "2026-09")],
  );
  assert.deepEqual(
    await listed([accountKeyIndex("a", "k1"), accountKeyIndex("b", "k2")], {
      prefix: accountKeysPrefix("a"),
    }),
    [accountKeyIndex("a", "k1")],
  );
});
