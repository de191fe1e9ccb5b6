import assert from "node:assert/strict";
import { instrumentKv, type KvStats } from "../../../lib/kv/instrument.ts";
import { json, startRouter } from "../../_helpers.ts";

Deno.test("instrumentKv counts commits, conflicts and plain writes, with or without a simulated round trip", async () => {
  const raw = await Deno.openKv(":memory:");
  try {
    for (const latency of [0, 2]) {
      const stats: KvStats = { commits: 0, conflicts: 0, locked: 0 };
      const kv = instrumentKv(raw, stats, latency);
      await kv.set(["a", latency], 1);
      const e = await kv.get<number>(["a", latency]);
      assert.equal(e.value, 1);
      assert.equal((await kv.atomic().check(e).set(e.key, 2).commit()).ok, true);
      assert.equal((await kv.atomic().check(e).set(e.key, 3).commit()).ok, false, "stale check");
      await kv.delete(e.key);
      assert.deepEqual(await Array.fromAsync(kv.list({ prefix: ["a"] })), []);
      assert.deepEqual(stats, { commits: 3, conflicts: 1, locked: 0 });
    }
  } finally {
    raw.close();
  }
});

Deno.test("GET /v1/admin/stats: this process's commit counters, for the operator only", async () => {
  const t = await startRouter();
  try {
    const { key } = await t.account("1");
    const before = await json(await t.admin("GET", "/v1/admin/stats"), 200);
    await json(
      await t.call(key, "POST", "/v1/chat/completions", {
        model: "openai/gpt-4o-mini",
        messages: [{ role: "user", content: "hi" }],
      }),
      200,
    );
    const after = await json(await t.admin("GET", "/v1/admin/stats"), 200);
    assert.ok(after.kv.commits > before.kv.commits, "the request committed");
    assert.ok(after.actors.commits > before.actors.commits);
    assert.ok(after.actors.balance_commits >= before.actors.balance_commits);
    await json(await t.call(key, "GET", "/v1/admin/stats"), 401);
  } finally {
    await t.close();
  }
});
