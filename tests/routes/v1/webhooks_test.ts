import assert from "node:assert/strict";
import { json, kvSnapshot, startRouter } from "../../_helpers.ts";
import { startReceiver } from "../../_fakes/receiver.ts";
import { addEndpoint, deliveries } from "../../_webhooks.ts";

Deno.test("POST /v1/webhooks refuses bad bodies with a 400 naming the field, writing nothing", async () => {
  const t = await startRouter();
  try {
    const { mgmt } = await t.account("0");
    const before = await kvSnapshot(t);
    const bad: [unknown, RegExp][] = [
      [{ events: ["credits.purchased"] }, /'url'/],
      [{ url: "http://127.0.0.1/h" }, /'events'/],
      [{ url: "http://127.0.0.1/h", events: [] }, /'events': must name at least one/],
      [{ url: "http://127.0.0.1/h", events: ["credits.spent"] }, /'events.0'/],
      [{ url: "http://127.0.0.1/h", events: ["balance.low", "balance.low"] }, /must not repeat/],
      [{ url: "http://127.0.0.1/h", events: ["webhook.test"] }, /'events.0'/],
      [{ url: "ftp://127.0.0.1/h", events: ["balance.low"] }, /'url'/],
      [{ url: "http://user:pw@127.0.0.1/h", events: ["balance.low"] }, /'url'/],
      [{ url: `http://127.0.0.1/${"a".repeat(2100)}`, events: ["balance.low"] }, /'url'/],
      // Under 2048 characters as sent, 18 KB once percent-encoded: four such overflowed the
      // account's endpoint record (a 500 at the fourth, and no endpoint could be added after).
      [{ url: `http://127.0.0.1/${"測".repeat(2000)}`, events: ["balance.low"] }, /percent-enc/],
      [{ url: `http://127.0.0.1/${" ".repeat(1000)}x`, events: ["balance.low"] }, /percent-enc/],
      [{ url: "http://127.0.0.1/h", events: ["balance.low"], secret: "x" }, /'secret'|body/],
      ["not json", /not valid JSON/],
    ];
    for (const [body, message] of bad) {
      const res = await json(await t.call(mgmt, "POST", "/v1/webhooks", body), 400);
      assert.equal(res.error.code, "invalid_request");
      assert.match(res.error.message, message, JSON.stringify(body).slice(0, 80));
    }
    assert.deepEqual(await kvSnapshot(t), before);
  } finally {
    await t.close();
  }
});

Deno.test("webhook endpoints: list, get, patch, delete; at most 10 an account; the secret never again", async () => {
  const t = await startRouter();
  try {
    const { mgmt } = await t.account("0");
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) {
      const e = await json(
        await t.call(mgmt, "POST", "/v1/webhooks", {
          url: `http://127.0.0.1:9/hook/${i}#frag`,
          events: ["balance.low"],
        }),
        201,
      );
      assert.equal(e.url, `http://127.0.0.1:9/hook/${i}`, "the fragment is dropped");
      assert.deepEqual(Object.keys(e).sort(), [
        "created_at",
        "disabled",
        "events",
        "id",
        "secret",
        "updated_at",
        "url",
      ]);
      ids.push(e.id);
    }
    const eleventh = await json(
      await t.call(mgmt, "POST", "/v1/webhooks", {
        url: "http://127.0.0.1:9/more",
        events: ["balance.low"],
      }),
      400,
    );
    assert.match(eleventh.error.message, /at most 10/);

    const list = await json(await t.call(mgmt, "GET", "/v1/webhooks"), 200);
    assert.deepEqual(list.data.map((e: { id: string }) => e.id), ids);
    const one = await json(await t.call(mgmt, "GET", `/v1/webhooks/${ids[3]}`), 200);
    assert.equal(one.secret, undefined);
    assert.deepEqual(one, list.data[3]);

    const patched = await json(
      await t.call(mgmt, "PATCH", `/v1/webhooks/${ids[3]}`, {
        events: ["credits.purchased", "credits.refunded"],
        disabled: true,
      }),
      200,
    );
    assert.deepEqual(patched.events, ["credits.purchased", "credits.refunded"]);
    assert.equal(patched.disabled, true);
    assert.equal(patched.url, one.url);
    const tested = await json(await t.call(mgmt, "POST", `/v1/webhooks/${ids[3]}/test`), 409);
    assert.equal(tested.error.code, "endpoint_disabled");
    await json(await t.call(mgmt, "PATCH", `/v1/webhooks/${ids[3]}`, { secret: "x" }), 400);
    await json(
      await t.call(mgmt, "PATCH", `/v1/webhooks/${ids[3]}`, { url: "http://10.0.0.1/" }),
      400,
    );

    assert.deepEqual(await json(await t.call(mgmt, "DELETE", `/v1/webhooks/${ids[3]}`), 200), {
      id: ids[3],
      deleted: true,
    });
    for (const [method, path] of [["GET", ""], ["PATCH", ""], ["DELETE", ""], ["POST", "/test"]]) {
      const body = method === "PATCH" ? { disabled: false } : undefined;
      await json(await t.call(mgmt, method, `/v1/webhooks/${ids[3]}${path}`, body), 404);
    }
    await json(await t.call(mgmt, "GET", `/v1/webhooks/${ids[3]}/deliveries`), 404);
    // Room again for one more.
    await json(
      await t.call(mgmt, "POST", "/v1/webhooks", {
        url: "http://127.0.0.1:9/more",
        events: ["balance.low"],
      }),
      201,
    );
  } finally {
    await t.close();
  }
});

Deno.test("ten endpoints whose URLs are at the longest once percent-encoded all fit, as sent and stored", async () => {
  const t = await startRouter();
  try {
    const { mgmt } = await t.account("0");
    for (let i = 0; i < 10; i++) {
      // "http://127.0.0.1/" and a digit, then 226 characters of 9 once encoded: 2052 > 2048.
      const long = `http://127.0.0.1/${i}${"測".repeat(226)}`;
      const refused = await json(
        await t.call(mgmt, "POST", "/v1/webhooks", { url: long, events: ["balance.low"] }),
        400,
      );
      assert.match(refused.error.message, /'url'.*percent-encoded/);
      const e = await json(
        await t.call(mgmt, "POST", "/v1/webhooks", {
          url: long.slice(0, -1),
          events: ["balance.low"],
        }),
        201,
      );
      assert.equal(e.url.length, 2043);
    }
    const list = await json(await t.call(mgmt, "GET", "/v1/webhooks"), 200);
    assert.equal(list.data.length, 10);
  } finally {
    await t.close();
  }
});

Deno.test("webhook endpoints belong to their account: another's look missing; an inference key is refused", async () => {
  const t = await startRouter();
  const rx = startReceiver();
  try {
    const a = await t.account("0");
    const b = await t.account("0");
    const ep = await addEndpoint(t, a.mgmt, rx, ["credits.purchased"]);
    for (
      const [method, path] of [
        ["GET", ""],
        ["PATCH", ""],
        ["DELETE", ""],
        ["POST", "/test"],
        ["GET", "/deliveries"],
      ]
    ) {
      const body = method === "PATCH" ? { disabled: true } : undefined;
      const res = await json(await t.call(b.mgmt, method, `/v1/webhooks/${ep}${path}`, body), 404);
      assert.equal(res.error.code, "not_found");
    }
    assert.deepEqual((await json(await t.call(b.mgmt, "GET", "/v1/webhooks"), 200)).data, []);
    assert.equal(rx.received.length, 0);
    const scoped = await json(await t.call(a.key, "GET", "/v1/webhooks"), 403);
    assert.equal(scoped.error.code, "forbidden");
    await json(await t.call("er-unknown", "GET", "/v1/webhooks"), 401);
  } finally {
    await rx.close();
    await t.close();
  }
});

Deno.test("GET /v1/webhooks/{id}/deliveries pages newest first; a bad cursor is 400", async () => {
  const t = await startRouter();
  const rx = startReceiver();
  try {
    const { mgmt } = await t.account("0");
    const ep = await addEndpoint(t, mgmt, rx, ["credits.purchased"]);
    const sent: string[] = [];
    for (let i = 0; i < 3; i++) {
      sent.push(
        (await json(await t.call(mgmt, "POST", `/v1/webhooks/${ep}/test`), 200)).webhook_id,
      );
    }
    const all = await deliveries(t, mgmt, ep);
    assert.deepEqual(all.map((d) => d.webhook_id), sent.toReversed());
    const first = await json(
      await t.call(mgmt, "GET", `/v1/webhooks/${ep}/deliveries?limit=2`),
      200,
    );
    assert.equal(first.data.length, 2);
    const rest = await json(
      await t.call(
        mgmt,
        "GET",
        `/v1/webhooks/${ep}/deliveries?limit=2&cursor=${first.next_cursor}`,
      ),
      200,
    );
    assert.deepEqual(rest.data.map((d: { webhook_id: string }) => d.webhook_id), [sent[0]]);
    assert.equal(rest.next_cursor, null);
    for (const cursor of ["abc", "A", "eDE"]) {
      const bad = `/v1/webhooks/${ep}/deliveries?cursor=${cursor}`;
      assert.match((await json(await t.call(mgmt, "GET", bad), 400)).error.message, /.cursor./);
    }
    await json(await t.call(mgmt, "GET", `/v1/webhooks/${ep}/deliveries?limit=0`), 400);
  } finally {
    await rx.close();
    await t.close();
  }
});
