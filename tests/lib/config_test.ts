import assert from "node:assert/strict";
import { loadConfig } from "../../lib/config.ts";
import { ConfigError } from "../../lib/errors.ts";
import { mainTs } from "../_main.ts";

Deno.test("defaults follow API.md's table", () => {
  const c = loadConfig({});
  assert.equal(c.port, 8000);
  assert.equal(c.listenHost, "127.0.0.1");
  assert.equal(c.maxBodyBytes, 10 * 1024 * 1024);
  assert.equal(c.pageBodyBytes, 64 * 1024);
  assert.equal(c.webhookBodyBytes, 1024 * 1024);
  assert.equal(c.bodyTimeoutMs, 60_000);
  assert.equal(c.headerTimeoutMs, 20_000);
  assert.equal(c.idleTimeoutMs, 75_000);
  assert.equal(c.maxConnectionsPerClient, 256);
  assert.equal(c.upstreamTimeoutMs, 300_000);
  assert.equal(c.kvPath, "./data/router.kv");
  assert.equal(c.billingMode, "development");
  assert.equal(c.discountBps, 2000);
  assert.equal(c.openai.baseUrl, "https://api.openai.com/v1");
  assert.equal(c.openai.apiKey, undefined, "a provider without a key is not offered");
  assert.ok(c.adminTokenGenerated && c.adminToken!.length >= 16, "development generates a token");
  assert.equal(c.outboxDelivery, "queue");
  assert.equal(loadConfig({ DENO_DEPLOYMENT_ID: "x" }).outboxDelivery, "drainer");
  assert.equal(loadConfig({ OUTBOX_DELIVERY: "drainer" }).outboxDelivery, "drainer");
});

Deno.test("values are parsed exactly", () => {
  const c = loadConfig({
    PORT: "0",
    DISCOUNT_PERCENT: "12.5",
    OPENAI_BASE_URL: "http://127.0.0.1:9/v1///",
    HOLD_TTL_MS: "2000",
    ADMIN_TOKEN: "0123456789abcdef",
    SHUTDOWN_GRACE_MS: "0",
    PAGE_BODY_BYTES: "2048",
    WEBHOOK_BODY_BYTES: "4096",
    BODY_TIMEOUT_MS: "100",
    HEADER_TIMEOUT_MS: "200",
    IDLE_TIMEOUT_MS: "300",
    MAX_CONNECTIONS_PER_CLIENT: "0",
  });
  assert.equal(c.port, 0);
  assert.deepEqual(
    [c.pageBodyBytes, c.webhookBodyBytes, c.bodyTimeoutMs, c.headerTimeoutMs, c.idleTimeoutMs],
    [2048, 4096, 100, 200, 300],
  );
  assert.equal(c.maxConnectionsPerClient, 0, "0 turns the cap off");
  assert.equal(c.shutdownGraceMs, 0);
  assert.equal(loadConfig({}).shutdownGraceMs, 30_000);
  assert.equal(c.discountBps, 1250);
  assert.equal(c.openai.baseUrl, "http://127.0.0.1:9/v1");
  assert.equal(c.holdTtlMs, 2000);
  assert.equal(c.adminTokenGenerated, false);
  assert.equal(loadConfig({ DISCOUNT_PERCENT: "0" }).discountBps, 0);
  assert.equal(loadConfig({ DISCOUNT_PERCENT: "100" }).discountBps, 10_000);
  assert.equal(loadConfig({ PORT: "" }).port, 8000, "an empty variable is unset");
});

Deno.test("a bad value is one line naming the variable", () => {
  for (
    const [name, value] of [
      ["PORT", "eighty"],
      ["PORT", "70000"],
      ["MAX_BODY_BYTES", "-1"],
      ["UPSTREAM_TIMEOUT_MS", "0"],
      ["PAGE_BODY_BYTES", "1000"],
      ["WEBHOOK_BODY_BYTES", "1MB"],
      ["BODY_TIMEOUT_MS", "99"],
      ["HEADER_TIMEOUT_MS", "-1"],
      ["IDLE_TIMEOUT_MS", "3600001"],
      ["MAX_CONNECTIONS_PER_CLIENT", "many"],
      ["ADMIN_TOKEN", "short"],
      ["METRICS_TOKEN", "short"],
      ["BILLING_MODE", "free"],
      ["DISCOUNT_PERCENT", "101"],
      ["DISCOUNT_PERCENT", "-5"],
      ["DISCOUNT_PERCENT", "12.345"],
      ["OPENAI_BASE_URL", "not a url"],
      ["OPENAI_BASE_URL", "ftp://example.com"],
      ["OUTBOX_DELIVERY", "smoke"],
      ["HOLD_TTL_MS", "10"],
      ["SHUTDOWN_GRACE_MS", "-1"],
      ["SHUTDOWN_GRACE_MS", "3600001"],
      ["TRUSTED_PROXIES", "10.0.0.1,proxy.internal"],
      ["TRUSTED_PROXIES", "10.0.0.0/33"],
      ["TRUSTED_PROXIES", "10.0.0.256"],
      ["TRUSTED_PROXIES", "10.0.0.1;10.0.0.2"],
    ]
  ) {
    assert.throws(() => loadConfig({ [name]: value }), (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.ok(e.message.startsWith(`${name}: `), e.message);
      assert.ok(!e.message.includes("\n"), "one line");
      return true;
    });
  }
  assert.throws(() => loadConfig({ BILLING_MODE: "production" }), /^ConfigError: BILLING_MODE: /);
});

Deno.test("TRUSTED_PROXIES is a comma-separated list of IPs and CIDR ranges, kept in canonical form", () => {
  assert.deepEqual(loadConfig({}).trustedProxies, []);
  assert.deepEqual(
    loadConfig({
      TRUSTED_PROXIES: " 10.0.0.2, 2001:DB8::0:9 ,,::ffff:10.0.0.3, 172.16.5.4/12, FD00::/8",
    }).trustedProxies,
    ["10.0.0.2", "2001:db8::9", "10.0.0.3", "172.16.0.0/12", "fd00::/8"],
  );
  assert.throws(
    () => loadConfig({ TRUSTED_PROXIES: "10.0.0.2, proxy.internal" }),
    /^ConfigError: TRUSTED_PROXIES: "proxy.internal" is not an IP address/,
  );
});

Deno.test("main.ts stops on bad configuration with one line naming the variable", async () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ PORT: "eighty" }, /PORT: must be a whole number/],
    [{ TRUSTED_PROXIES: "10.0.0.1, nope" }, /TRUSTED_PROXIES: "nope" is not an IP address/],
  ];
  for (const [env, message] of cases) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts"],
      cwd: new URL("../../", import.meta.url).pathname,
      env: { ...env, KV_PATH: ":memory:", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 1);
    const err = new TextDecoder().decode(out.stderr).trim();
    assert.equal(err.split("\n").length, 1, err);
    assert.match(err, message);
  }
});

Deno.test("main.ts names the variable when the KV, the address or a value's own text is the trouble", async () => {
  const dir = await Deno.makeTempDir();
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    await Deno.writeTextFile(`${dir}/file`, "");
    await Deno.writeTextFile(`${dir}/providers.json`, '{"providers":\n  nope}');
    const cases: [Record<string, string>, RegExp][] = [
      [{ KV_PATH: `${dir}/file/router.kv` }, /^configuration error: KV_PATH: cannot open /],
      [{ KV_PATH: dir }, /^configuration error: KV_PATH: cannot open /],
      [{ LISTEN_HOST: "not a host!" }, /^configuration error: LISTEN_HOST: /],
      // TEST-NET-3: an address no interface of this machine has.
      [{ LISTEN_HOST: "203.0.113.9" }, /^configuration error: LISTEN_HOST: cannot listen on /],
      [{ PORT: String(busy.addr.port) }, /^configuration error: PORT: cannot listen on /],
      [{ TRUSTED_PROXIES: "10.0.0.1,a\nb" }, /^configuration error: TRUSTED_PROXIES: "a b" is not/],
      [{ PROVIDERS_FILE: `${dir}/providers.json` }, /^configuration error: PROVIDERS_FILE: /],
      [
        {
          CREDIT_PACKAGES: JSON.stringify([
            { id: "a", name: "A", price: "1", credits: "1" },
            { id: "a", name: "B", price: "2", credits: "2" },
          ]),
        },
        /^configuration error: CREDIT_PACKAGES: .*unique/,
      ],
    ];
    for (const [env, message] of cases) {
      const out = await mainTs({ KV_PATH: ":memory:", ...env }).output();
      const err = new TextDecoder().decode(out.stderr).trim();
      assert.equal(out.code, 1, `${JSON.stringify(env)}: ${err}`);
      assert.equal(err.split("\n").length, 1, err);
      assert.match(err, message);
    }
  } finally {
    busy.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("main.ts starts with every variable at the edge of what it accepts", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const envs: Record<string, string>[] = [
      {
        MAX_BODY_BYTES: "1024",
        UPSTREAM_TIMEOUT_MS: "1",
        HOLD_TTL_MS: "1000",
        AUDIT_RETENTION_DAYS: "1",
        SHUTDOWN_GRACE_MS: "3600000",
        DISCOUNT_PERCENT: "0",
        ADMIN_TOKEN: "0123456789abcdef",
        OUTBOX_DELIVERY: "drainer",
        TRUSTED_PROXIES: "0.0.0.0/0, ::/0",
        LISTEN_HOST: "localhost",
        KV_PATH: `${dir}/new/nested/router.kv`,
      },
      {
        MAX_BODY_BYTES: String(1 << 30),
        UPSTREAM_TIMEOUT_MS: "3600000",
        HOLD_TTL_MS: "86400000",
        AUDIT_RETENTION_DAYS: "36500",
        DISCOUNT_PERCENT: "100",
        OUTBOX_DELIVERY: "queue",
        LISTEN_HOST: "0.0.0.0",
        CREDIT_PACKAGES: JSON.stringify([{ id: "x", name: "X", price: "0.01", credits: "1" }]),
      },
      { DISCOUNT_PERCENT: "99.99", OUTBOX_DELIVERY: "auto", DENO_DEPLOYMENT_ID: "edge" },
    ];
    for (const env of envs) {
      const child = mainTs({ KV_PATH: ":memory:", ...env }).spawn();
      let out = "";
      const dec = new TextDecoder();
      const reader = child.stdout.getReader();
      while (!out.includes('"msg":"listening"')) {
        const { value, done } = await reader.read();
        if (done) break;
        out += dec.decode(value, { stream: true });
      }
      reader.releaseLock();
      // The SIGTERM handler is registered right after the listening line is printed.
      await new Promise((r) => setTimeout(r, 200));
      child.kill("SIGTERM");
      const [status, err] = await Promise.all([
        child.status,
        new Response(child.stderr).text(),
        child.stdout.cancel(),
      ]);
      assert.match(out, /"msg":"listening"/, `${JSON.stringify(env)}: ${err}`);
      assert.equal(status.code, 0, err);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the stream and upstream limits default as README's table says, and are checked", () => {
  const c = loadConfig({});
  assert.deepEqual(
    [c.maxStreamMs, c.maxSseEventBytes, c.maxUpstreamBodyBytes],
    [3_600_000, 16 * 1024 * 1024, 64 * 1024 * 1024],
  );
  const set = loadConfig({
    MAX_STREAM_MS: "5000",
    MAX_SSE_EVENT_BYTES: "1024",
    MAX_UPSTREAM_BODY_BYTES: "2048",
  });
  assert.deepEqual([set.maxStreamMs, set.maxSseEventBytes, set.maxUpstreamBodyBytes], [
    5000,
    1024,
    2048,
  ]);
  assert.throws(() => loadConfig({ MAX_STREAM_MS: "0" }), /^ConfigError: MAX_STREAM_MS: /);
  assert.throws(
    () => loadConfig({ MAX_SSE_EVENT_BYTES: "1k" }),
    /^ConfigError: MAX_SSE_EVENT_BYTES: must be a whole number/,
  );
  assert.throws(
    () => loadConfig({ MAX_UPSTREAM_BODY_BYTES: "100" }),
    /^ConfigError: MAX_UPSTREAM_BODY_BYTES: must be at least 1024/,
  );
});
