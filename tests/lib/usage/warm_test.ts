import assert from "node:assert/strict";
import { json, startRouter } from "../../_helpers.ts";
import { warmUsageDigests } from "../../../lib/usage/warm.ts";

const USAGE = { prompt_tokens: 1000, completion_tokens: 200 };

async function chat(t: Awaited<ReturnType<typeof startRouter>>, key: string) {
  const res = await t.call(key, "POST", "/v1/chat/completions", {
    model: "openai/gpt-4o-mini",
    messages: [{ role: "user", content: "hi" }],
  });
  await json(res, 200);
}

async function digestCount(kv: Deno.Kv, accountId: string, scope?: string): Promise<number> {
  let n = 0;
  for await (const e of kv.list({ prefix: ["rollup_digest", accountId] })) {
    if (scope === undefined || e.key[3] === scope) n++;
  }
  return n;
}

Deno.test("warmUsageDigests digests closed days so later queries read them, with the same figures", async () => {
  // The injected clock runs ahead of the real one (ids stay ordered) and only moves forward.
  let clock = Date.parse("2030-03-10T12:00:00Z");
  const t = await startRouter({ now: () => clock });
  try {
    const spender = await t.account("1");
    const idle = await t.account("1");
    t.openai.scenario = { usage: USAGE };
    await chat(t, spender.key);
    clock = Date.parse("2030-03-11T09:00:00Z");
    await chat(t, spender.key);
    await chat(t, spender.key);
    clock = Date.parse("2030-03-12T08:00:00Z");
    await t.router.flush();

    const query = "/v1/usage?from=2030-03-01&to=2030-03-11&group_by=key";
    assert.equal(await digestCount(t.kv, spender.id), 0);
    assert.equal(await warmUsageDigests(t.kv, clock), 1, "only the account that spent is warmed");
    assert.ok(await digestCount(t.kv, spender.id) > 0, "closed days of the spender are digested");
    assert.ok(
      await digestCount(t.kv, spender.id, spender.keyId) > 0,
      "and those of its key's own groupings (by provider, by model)",
    );
    assert.equal(await digestCount(t.kv, idle.id), 0);

    // A key's breakdown by model reads the warmed digests: it writes none, and agrees.
    const before = await digestCount(t.kv, spender.id);
    const byModel = await json(
      await t.call(
        spender.mgmt,
        "GET",
        `/v1/keys/${spender.keyId}/usage?from=2030-03-01&to=2030-03-11&group_by=model`,
      ),
      200,
    );
    assert.equal(await digestCount(t.kv, spender.id), before);
    assert.deepEqual(byModel.breakdown.map((r: { group: string }) => r.group), ["gpt-4o-mini"]);
    assert.equal(byModel.summary.requests, 3);

    const warm = await json(await t.call(spender.mgmt, "GET", query), 200);
    assert.equal(warm.summary.requests, 3);
    assert.equal(warm.breakdown.length, 1);
    assert.equal(warm.breakdown[0].group, spender.keyId);
    assert.equal(warm.breakdown[0].requests, 3);
    const credits = await json(await t.call(spender.mgmt, "GET", "/v1/credits"), 200);
    assert.equal(warm.summary.cost, credits.total_used);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});
