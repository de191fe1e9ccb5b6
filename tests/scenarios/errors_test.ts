import assert from "node:assert/strict";
import {
  assertNothingWritten,
  json,
  kvSnapshot,
  startRouter,
  type TestRouter,
} from "../_helpers.ts";

async function expectError(res: Response, status: number, code: string, message?: RegExp) {
  const body = await json(res, status);
  assert.equal(body.error.code, code, JSON.stringify(body));
  assert.equal(typeof body.error.type, "string");
  assert.equal(typeof body.error.message, "string");
  if (message) assert.match(body.error.message, message);
  assert.ok(res.headers.get("content-type")?.startsWith("application/json"));
  return body;
}

Deno.test("bad inference input gets the right JSON error and writes nothing", async () => {
  const t = await startRouter({ env: { MAX_BODY_BYTES: "4096" } });
  try {
    const { key, mgmt: mgmt0 } = await t.account("1");
    const before = await kvSnapshot(t);
    const chat = (body: unknown) => t.call(key, "POST", "/v1/chat/completions", body);
    const hi = [{ role: "user", content: "hi" }];

    await expectError(
      await chat('{"model": "gpt-4o-mini", "messages": ['),
      400,
      "invalid_request",
      /JSON/,
    );
    await expectError(await chat(""), 400, "invalid_request", /JSON/);
    await expectError(
      await chat({ model: "gpt-4o-mini", messages: "hi" }),
      400,
      "invalid_request",
      /'messages'/,
    );
    await expectError(
      await chat({ model: "gpt-4o-mini", messages: [] }),
      400,
      "invalid_request",
      /'messages'/,
    );
    await expectError(await chat({ messages: hi }), 400, "invalid_request", /'model'/);
    await expectError(await chat({ model: 42, messages: hi }), 400, "invalid_request", /'model'/);
    await expectError(
      await chat({ model: "gpt-4o-mini", messages: hi, max_tokens: "100" }),
      400,
      "invalid_request",
      /'max_tokens'/,
    );
    await expectError(
      await chat({ model: "gpt-4o-mini", messages: hi, max_tokens: -1 }),
      400,
      "invalid_request",
      /'max_tokens'/,
    );
    await expectError(
      await chat({ model: "gpt-4o-mini", messages: hi, stream: "yes" }),
      400,
      "invalid_request",
      /'stream'/,
    );
    await expectError(
      await chat({ model: "gpt-4o-mini", messages: [{ content: "no role" }] }),
      400,
      "invalid_request",
      /'messages\.0\.role'/,
    );
    await expectError(await chat([1, 2, 3]), 400, "invalid_request");
    await expectError(
      await t.call(key, "POST", "/v1/embeddings", { model: "text-embedding-3-small", input: 5 }),
      400,
      "invalid_request",
      /'input'/,
    );
    await expectError(
      await t.call(key, "POST", "/v1/embeddings", { model: "gpt-4o-mini", input: "x" }),
      400,
      "invalid_request",
      /chat model/,
    );
    await expectError(
      await chat({ model: "gpt-4o-mini", messages: [{ role: "user", content: "x".repeat(5000) }] }),
      413,
      "request_too_large",
    );
    await expectError(await chat({ model: "nope/xyz", messages: hi }), 404, "model_not_found");
    await expectError(
      await chat({ model: "no-such-model-xyz", messages: hi }),
      404,
      "model_not_found",
    );
    await expectError(
      await chat({ model: "openai/not-a-priced-model", messages: hi }),
      404,
      "model_not_priced",
    );

    assert.equal(t.openai.requests.length, 0, "nothing was forwarded");
    // Each refusal of a known key leaves a cost-0 audit row (API.md), and nothing else.
    const after = await kvSnapshot(t);
    const audit = await json(await t.call(mgmt0, "GET", "/v1/audit?limit=1000"), 200);
    const codes = audit.data.map((r: { status: number; error_code: string }) =>
      `${r.status} ${r.error_code}`
    ).sort();
    assert.deepEqual(codes, [
      ...Array(13).fill("400 invalid_request"),
      "404 model_not_found",
      "404 model_not_found",
      "404 model_not_priced",
      "413 request_too_large",
    ]);
    assert.ok(audit.data.every((r: { cost: string }) => r.cost === "0"), "refusals cost 0");
    assertNothingWritten(before, after, 17);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

Deno.test("bad or missing credentials: 401/403 and not a byte written", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    const before = await kvSnapshot(t);
    const body = { model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] };
    const noAuth = await fetch(`${t.url}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify(body),
    });
    await expectError(noAuth, 401, "invalid_api_key");
    await expectError(
      await t.call("er-unknownunknownunknownunknown", "POST", "/v1/chat/completions", body),
      401,
      "invalid_api_key",
    );
    await expectError(
      await t.call("garbage", "POST", "/v1/chat/completions", body),
      401,
      "invalid_api_key",
    );
    await expectError(await t.call("", "GET", "/v1/credits"), 401, "invalid_api_key");
    await expectError(await t.call(mgmt, "POST", "/v1/chat/completions", body), 403, "forbidden");
    await expectError(await t.call(mgmt, "POST", "/v1/embeddings", body), 403, "forbidden");
    await expectError(await t.call(key, "GET", "/v1/credits"), 403, "forbidden");
    await expectError(await t.call(key, "GET", "/v1/keys"), 403, "forbidden");
    await expectError(await t.call(key, "GET", "/v1/transactions"), 403, "forbidden");
    await expectError(await t.call(key, "GET", "/v1/admin/accounts"), 401, "invalid_api_key");
    await expectError(await t.call(mgmt, "GET", "/v1/admin/verify"), 401, "invalid_api_key");
    // The Anthropic SDK's header is accepted too, and checked the same way.
    const xKey = await fetch(`${t.url}/v1/key`, { headers: { "x-api-key": "er-nope" } });
    await expectError(xKey, 401, "invalid_api_key");
    assert.equal(t.openai.requests.length, 0);
    assertNothingWritten(before, await kvSnapshot(t), 0);
  } finally {
    await t.close();
  }
});

Deno.test("a revoked or disabled key is refused on its very next request", async () => {
  const t = await startRouter();
  try {
    const { key, keyId, mgmt } = await t.account("1");
    const body = { model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] };
    await json(await t.call(key, "POST", "/v1/chat/completions", body), 200);

    await json(await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, { disabled: true }), 200);
    await expectError(await t.call(key, "POST", "/v1/chat/completions", body), 403, "key_disabled");
    await expectError(await t.call(key, "GET", "/v1/key"), 403, "key_disabled");
    await json(await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, { disabled: false }), 200);
    await json(await t.call(key, "POST", "/v1/chat/completions", body), 200);

    await json(await t.call(mgmt, "DELETE", `/v1/keys/${keyId}`), 200);
    await expectError(
      await t.call(key, "POST", "/v1/chat/completions", body),
      401,
      "invalid_api_key",
    );
    // The revoked key stays readable for the record, and can no longer change.
    assert.equal((await json(await t.call(mgmt, "GET", `/v1/keys/${keyId}`), 200)).revoked, true);
    await expectError(
      await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, { disabled: false }),
      404,
      "not_found",
    );
    assert.equal(t.openai.requests.length, 2);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});

/**
 * Calls `t` with `key` until it is refused with `status`/`code` (within 10 s), and returns how many
 * requests it still served meanwhile.
 */
async function servedUntilRefused(
  t: TestRouter,
  key: string,
  body: unknown,
  status: number,
  code: string,
): Promise<number> {
  const end = Date.now() + 10_000;
  for (let served = 0;; served++) {
    const res = await t.call(key, "POST", "/v1/chat/completions", body);
    if (res.status !== 200) {
      await expectError(res, status, code);
      return served;
    }
    await res.body?.cancel();
    assert.ok(Date.now() < end, "the change was never seen");
    await new Promise((r) => setTimeout(r, 50));
  }
}

Deno.test("a key revoked or disabled through another process is refused here once its cached record lapses; what it served meanwhile is billed", async () => {
  const dir = await Deno.makeTempDir();
  // Without queue listeners, which would both poll the one file's queue.
  const env = { OUTBOX_DELIVERY: "drainer" };
  const a = await startRouter({ kvPath: `${dir}/router.kv`, env });
  const b = await startRouter({ kvPath: `${dir}/router.kv`, env });
  try {
    const { key, keyId, mgmt } = await a.account("1");
    const body = { model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] };
    // Warm b's key cache (and b's lease on the account), then revoke through a: b serves the key
    // from its lease as its cached record has it, for the cache's lifetime (2 s) at most.
    await json(await b.call(key, "POST", "/v1/chat/completions", body), 200);
    await b.router.flush();
    await json(await a.call(mgmt, "DELETE", `/v1/keys/${keyId}`), 200);
    const revoked = await servedUntilRefused(b, key, body, 401, "invalid_api_key");
    await b.router.flush();
    const other = await a.account("1");
    await json(await b.call(other.key, "POST", "/v1/chat/completions", body), 200);
    await b.router.flush();
    await json(
      await a.call(other.mgmt, "PATCH", `/v1/keys/${other.keyId}`, { disabled: true }),
      200,
    );
    const disabled = await servedUntilRefused(b, other.key, body, 403, "key_disabled");
    await b.router.flush();
    const served = [revoked, disabled];
    for (const [i, mgmtKey] of [mgmt, other.mgmt].entries()) {
      const tx = await json(await a.call(mgmtKey, "GET", "/v1/transactions?type=usage_debit"), 200);
      assert.equal(tx.data.length, 1 + served[i], "every request served is billed, no other");
    }
    assert.equal(b.openai.requests.length, 2 + revoked + disabled, "no call was made unbilled");
    await a.assertBooks();
  } finally {
    await a.close();
    await b.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("unknown /v1 routes and methods, and bodies of other content types, get the JSON error", async () => {
  const t = await startRouter();
  try {
    const { key, mgmt } = await t.account("1");
    const before = await kvSnapshot(t);
    const cases: [
      string,
      string,
      string | null,
      number,
      string,
      Record<string, string>?,
      string?,
    ][] = [
      ["GET", "/v1", null, 404, "not_found"],
      ["GET", "/v1/nothing", key, 404, "not_found"],
      ["POST", "/v1/nothing", key, 404, "not_found", {}, "{}"],
      ["GET", "/v1/chat/completions", key, 404, "not_found"],
      ["PUT", "/v1/chat/completions", key, 404, "not_found", {}, "{}"],
      ["DELETE", "/v1/models", null, 404, "not_found"],
      ["PATCH", "/v1/credits", mgmt, 404, "not_found", {}, "{}"],
      ["OPTIONS", "/v1/keys", mgmt, 404, "not_found"],
      ["GET", "//v1/keys", mgmt, 404, "not_found"],
      ["POST", "/v1/keys", mgmt, 400, "invalid_request", {
        "content-type": "multipart/form-data; boundary=x",
      }, "--x--"],
      ["POST", "/v1/keys", mgmt, 400, "invalid_request", {
        "content-type": "application/x-www-form-urlencoded",
      }, "name=x"],
      ["POST", "/v1/chat/completions", key, 400, "invalid_request", {
        "content-type": "text/plain",
      }, "{"],
      ["GET", "/v1/keys", "x".repeat(5000), 401, "invalid_api_key"],
    ];
    for (const [method, path, secret, status, code, headers = {}, body] of cases) {
      const res = await fetch(t.url + path, {
        method,
        headers: { ...(secret ? { authorization: `Bearer ${secret}` } : {}), ...headers },
        body,
      });
      await expectError(res, status, code);
    }
    // The three on the inference path, with its key, are audited (the 404s too): nothing else.
    assertNothingWritten(before, await kvSnapshot(t), 3);
  } finally {
    await t.close();
  }
});

Deno.test("another account's key id is not found, whatever the method", async () => {
  const t = await startRouter();
  try {
    const mine = await t.account("1");
    const theirs = await t.account("1");
    for (const method of ["GET", "PATCH", "DELETE"]) {
      const res = await t.call(
        mine.mgmt,
        method,
        `/v1/keys/${theirs.keyId}`,
        method === "PATCH" ? { name: "stolen" } : undefined,
      );
      await expectError(res, 404, "not_found");
    }
    await expectError(
      await t.call(mine.mgmt, "GET", `/v1/keys/${theirs.keyId}/usage`),
      404,
      "not_found",
    );
    // Their key still works, unchanged.
    const k = await json(await t.call(theirs.mgmt, "GET", `/v1/keys/${theirs.keyId}`), 200);
    assert.equal(k.name, "test key");
    assert.equal(k.revoked, false);
  } finally {
    await t.close();
  }
});

// A streamed upload refused mid-body leaves fetch's request-body resource behind (STACK.md).
Deno.test({
  name: "a streamed body over MAX_BODY_BYTES is 413 too, audited, and nothing is forwarded",
  sanitizeResources: false,
  fn: async () => {
    const t = await startRouter({ env: { MAX_BODY_BYTES: "4096" } });
    try {
      const { key, mgmt } = await t.account("1");
      const before = await kvSnapshot(t);
      const big = new TextEncoder().encode(JSON.stringify({
        model: "gpt-4o-mini",
        messages: [{ role: "user", content: "x".repeat(100_000) }],
      }));
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          for (let i = 0; i < big.length; i += 1000) c.enqueue(big.slice(i, i + 1000));
          c.close();
        },
      });
      const res = await fetch(`${t.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key}` },
        body,
        duplex: "half",
      } as RequestInit);
      await expectError(res, 413, "request_too_large");
      assert.equal(t.openai.requests.length, 0);
      assertNothingWritten(before, await kvSnapshot(t), 1);
      const [row] = (await json(await t.call(mgmt, "GET", "/v1/audit"), 200)).data;
      assert.deepEqual([row.status, row.error_code, row.cost], [413, "request_too_large", "0"]);
      await t.assertBooks();
    } finally {
      await t.close();
    }
  },
});

Deno.test("a body over MAX_BODY_BYTES leaves one cost-0 audit row for a known key, none otherwise", async () => {
  const t = await startRouter({ env: { MAX_BODY_BYTES: "4096" } });
  try {
    const { key, keyId, mgmt } = await t.account("1");
    const before = await kvSnapshot(t);
    const big = { model: "gpt-4o-mini", messages: [{ role: "user", content: "x".repeat(5000) }] };
    const res = await t.call(key, "POST", "/v1/chat/completions", big);
    await expectError(res, 413, "request_too_large", /4096 bytes/);
    const requestId = res.headers.get("x-request-id")!;
    // Refusals of no key, an unknown key, a management key, or off the inference paths: no row.
    await expectError(
      await fetch(`${t.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify(big) }),
      413,
      "request_too_large",
    );
    for (const secret of ["er-unknownunknownunknownunknown", "garbage", mgmt]) {
      const r = await t.call(secret, "POST", "/v1/chat/completions", big);
      await expectError(r, 413, "request_too_large");
    }
    await expectError(
      await t.call(mgmt, "POST", "/v1/keys", { name: "x".repeat(5000) }),
      413,
      "request_too_large",
    );
    // A token count is audited too, answered or refused.
    await expectError(
      await t.call(key, "POST", "/v1/messages/count_tokens", big),
      413,
      "request_too_large",
    );
    assert.equal(t.openai.requests.length, 0, "nothing was forwarded");
    assertNothingWritten(before, await kvSnapshot(t), 2);

    const row = await json(await t.call(mgmt, "GET", `/v1/audit/${requestId}`), 200);
    assert.equal(row.key_id, keyId);
    assert.deepEqual([row.status, row.error_code, row.cost], [413, "request_too_large", "0"]);
    assert.equal(row.prompt_tokens, 0);
    const c = await json(await t.call(mgmt, "GET", "/v1/credits"), 200);
    assert.deepEqual([c.balance, c.reserved], ["1", "0"]);

    // A disabled key is known too (as for its 403): its over-size body is audited.
    await json(await t.call(mgmt, "PATCH", `/v1/keys/${keyId}`, { disabled: true }), 200);
    const disabled = await kvSnapshot(t);
    const r = await t.call(key, "POST", "/v1/embeddings", { model: "x", input: "x".repeat(5000) });
    await expectError(r, 413, "request_too_large");
    assertNothingWritten(disabled, await kvSnapshot(t), 1);
    await t.assertBooks();
  } finally {
    await t.close();
  }
});
