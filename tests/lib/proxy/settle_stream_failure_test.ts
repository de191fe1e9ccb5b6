import assert from "node:assert/strict";
import { json, startRouter } from "../../_helpers.ts";
import { billStream } from "../../../lib/proxy/settle.ts";
import { MeteredRequest } from "../../../lib/proxy/metered.ts";
import { RequestAudit } from "../../../lib/proxy/audit.ts";
import { chat } from "../../../lib/formats/chat.ts";
import { getKey } from "../../../lib/auth/keys.ts";
import { getAuditRow } from "../../../lib/audit/query.ts";
import { newId } from "../../../lib/ids.ts";

const CHUNK = {
  id: "chatcmpl-1",
  object: "chat.completion.chunk",
  model: "gpt-4o-mini",
  choices: [{ index: 0, delta: { content: "Hello" }, finish_reason: null }],
};

Deno.test("a stream whose settlement throws is released unbilled and audited internal_error: no hold is left renewed, the books balance", async () => {
  const t = await startRouter();
  try {
    const { id, keyId, mgmt } = await t.account("1");
    const svc = t.router.svc;
    const key = (await getKey(t.kv, keyId))!;
    const resolved = svc.providers.resolve("gpt-4o-mini");
    assert.ok(resolved.ok);
    const model = resolved.model;
    const audit = new RequestAudit(newId("req"), Date.now(), { ip: "", userAgent: "" }, Date.now);
    audit.target = { provider: model.provider, model: model.model };
    const raw = JSON.stringify({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
      stream: true,
    });
    const req = chat.request(raw, chat.schema.parse(JSON.parse(raw)));
    const m = new MeteredRequest({
      actors: svc.actors,
      log: svc.log,
      holdTtlMs: svc.config.holdTtlMs,
      key,
      audit,
    }, model);
    await m.reserve(req.hold([model]));
    const held = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.notEqual(held.reserved, "0", "the stream's hold is taken");

    // The stream ends without usage, so the router counts it: here that step breaks.
    const upstream = new Response(`data: ${JSON.stringify(CHUNK)}\n\n`).body!;
    const events = req.events!(model, upstream, {
      maxEventBytes: svc.config.maxSseEventBytes,
      bounded: (u) => m.bounded(u, false),
    });
    const broken = {
      ...events,
      unfinished: () => {
        throw new Error("a bug in counting");
      },
    };
    const text = await new Response(billStream(m, broken, svc.config, svc.streams)).text();
    assert.match(text, /Hello/, "the client got what was streamed");

    await t.assertBooks();
    const credits = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.equal(credits.reserved, "0", "the hold is released, not renewed");
    assert.equal(credits.balance, "1", "nothing charged");
    const row = await getAuditRow(t.kv, id, audit.requestId);
    assert.ok(row, "the request has its audit row");
    assert.equal(row.status, 500);
    assert.equal(row.error_code, "internal_error");
    assert.equal(row.cost, 0n);
  } finally {
    await t.close();
  }
});
