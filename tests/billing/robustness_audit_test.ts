/**
 * Robustness at the edges: Deno KV's size limits, events the recorder cannot write as they are,
 * holds expiring under live streams, and first requests racing their own credit.
 */
import assert from "node:assert/strict";
import { json, startRouter } from "../_helpers.ts";

Deno.test("a refused request naming a model of 70,000 characters is answered 404 and audited, truncated", async () => {
  const t = await startRouter();
  try {
    const acct = await t.account("1");
    for (const model of ["openai/" + "m".repeat(70_000), "中".repeat(30_000)]) {
      const res = await t.call(acct.key, "POST", "/v1/chat/completions", {
        model,
        messages: [{ role: "user", content: "hi" }],
      });
      const body = await json(res, 404);
      assert.equal(body.error.code, "model_not_found");
    }
    await t.router.flush();
    const audit = await json(await t.call(acct.mgmt, "GET", "/v1/audit"), 200);
    assert.equal(audit.data.length, 2, "both refusals have their audit row");
    for (const row of audit.data) {
      assert.equal(row.status, 404);
      assert.ok(row.model.length <= 256, `model kept short: ${row.model.length}`);
    }
    await t.assertBooks();
  } finally {
    await t.close();
  }
});
