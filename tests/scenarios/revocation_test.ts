import assert from "node:assert/strict";
import { ADMIN_TOKEN, json } from "../_helpers.ts";
import { spawnRouter } from "../_main.ts";
import { KEY_CACHE_MS } from "../../lib/auth/keys.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("a key revoked through one process is refused by another: management at once, any key within KEY_CACHE_MS", async () => {
  const dir = await Deno.makeTempDir();
  const env = { KV_PATH: `${dir}/router.kv`, ADMIN_TOKEN };
  const call = (url: string, secret: string, method: string, path: string, body?: unknown) =>
    fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  let a: Awaited<ReturnType<typeof spawnRouter>> | null = null;
  let b: Awaited<ReturnType<typeof spawnRouter>> | null = null;
  try {
    [a, b] = await Promise.all([spawnRouter(env), spawnRouter(env)]);
    const [one, two] = [a.url, b.url];
    const acct = await json(
      await call(one, ADMIN_TOKEN, "POST", "/v1/admin/accounts", { name: "Two processes" }),
      201,
    );
    const owner = acct.management_key;
    const newKey = async (name: string, scope: string) =>
      await json(await call(one, owner, "POST", "/v1/keys", { name, scope }), 201);
    const mgmt = await newKey("ops", "management");
    const disabled = await newKey("ops 2", "management");
    const inference = await newKey("app", "inference");

    // The second process has looked each key up (and would cache it).
    await json(await call(two, mgmt.key, "GET", "/v1/credits"), 200);
    await json(await call(two, disabled.key, "GET", "/v1/credits"), 200);
    await json(await call(two, inference.key, "GET", "/v1/key"), 200);

    await json(await call(one, owner, "DELETE", `/v1/keys/${mgmt.id}`), 200);
    await json(await call(one, owner, "PATCH", `/v1/keys/${disabled.id}`, { disabled: true }), 200);
    await json(await call(one, owner, "DELETE", `/v1/keys/${inference.id}`), 200);
    const revoked = Date.now();

    // Management calls read the key afresh: refused by the other process on the next call.
    const refused = await json(await call(two, mgmt.key, "GET", "/v1/credits"), 401);
    assert.equal(refused.error.code, "invalid_api_key");
    await json(await call(two, mgmt.key, "POST", "/v1/keys", { name: "x" }), 401);
    assert.equal(
      (await json(await call(two, disabled.key, "GET", "/v1/keys"), 403)).error.code,
      "key_disabled",
    );

    // Any key is seen revoked within KEY_CACHE_MS: polled until refused, and no call sent after
    // that bound may be served.
    const deadline = revoked + KEY_CACHE_MS;
    for (;;) {
      const sent = Date.now();
      const res = await call(two, inference.key, "GET", "/v1/key");
      await res.body?.cancel();
      if (res.status === 401) break;
      assert.equal(res.status, 200);
      assert.ok(sent < deadline, `served ${sent - revoked} ms after the revocation`);
      await sleep(50);
    }
  } finally {
    await a?.stop().catch(() => {});
    await b?.stop().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});
