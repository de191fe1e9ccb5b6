import assert from "node:assert/strict";
import { loadConfig } from "../lib/config.ts";
import { type AppDeps, createApp, type Router } from "../lib/app.ts";
import type { ProvidersFile } from "../lib/providers/registry.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import { type FakeOpenAI, startFakeOpenAI } from "./_fakes/openai.ts";
import { serveLoopback } from "./_fakes/serve.ts";
import { trustingProxies } from "../lib/http/client_addr.ts";
import { signUp } from "../lib/onboarding.ts";
import { adminTokenTag, createSession, SESSION_COOKIE } from "../lib/auth/sessions.ts";
import { migrateSchema } from "../lib/migrations.ts";

export const ADMIN_TOKEN = "test-admin-token-0123456789";

/**
 * Request metadata of at least `bytes` bytes, to spread into a request body: a request carrying
 * it may report up to that many prompt tokens within its hold's bound (a text prompt is never
 * billed more tokens than its body has bytes). No provider sees it as prompt text.
 */
export const padding = (bytes = 2000) => ({
  metadata: { note: "Answer briefly and exactly. ".repeat(Math.ceil(bytes / 28)) },
});

export interface TestRouter {
  url: string;
  router: Router;
  kv: Deno.Kv;
  openai: FakeOpenAI;
  /** Admin API call. */
  admin(
    method: string,
    path: string,
    body?: unknown,
    headers?: Record<string, string>,
  ): Promise<Response>;
  /** Call with a key. */
  call(
    key: string,
    method: string,
    path: string,
    body?: unknown,
    headers?: Record<string, string>,
  ): Promise<Response>;
  /** A new account with `credit` USD granted by adjustment; returns its management key and an inference key. */
  account(
    credit?: string,
    keySpec?: Record<string, unknown>,
  ): Promise<{ id: string; mgmt: string; key: string; keyId: string }>;
  /** Records pending events, then asserts Σ ledger = balance and reserved = Σ holds for every account. */
  assertBooks(): Promise<void>;
  close(): Promise<void>;
}

/**
 * A clock running with real time but set back to a minute past the start of the current quarter
 * hour: a test counting against the sign-in windows (5 and 15 minutes) then never spans a window's
 * end, which would reset its count halfway.
 */
export function windowAlignedClock(): () => number {
  const real = Date.now();
  const offset = real - (real % (15 * 60_000)) + 60_000 - real;
  return () => Date.now() + offset;
}

export interface RouterOptions {
  env?: Record<string, string>;
  providersFile?: ProvidersFile;
  kvPath?: string;
  log?: Logger;
  now?: () => number;
  /** What the router is given instead of the opened KV (tests that watch or hold its commits). */
  wrapKv?: (kv: Deno.Kv) => Deno.Kv;
  /** Customer webhooks' stand-ins (DNS, TLS roots, retry unit, timeout). */
  webhooks?: AppDeps["webhooks"];
  /** The Stripe client the router is given instead of the one its configuration makes. */
  stripe?: AppDeps["stripe"];
}

/** Starts the router on a real port against a fake OpenAI, on in-memory (or file) Deno KV. */
export async function startRouter(opts: RouterOptions = {}): Promise<TestRouter> {
  const openai = startFakeOpenAI();
  const env = {
    ADMIN_TOKEN,
    OPENAI_API_KEY: "sk-upstream-test",
    OPENAI_BASE_URL: openai.url,
    KV_PATH: opts.kvPath ?? ":memory:",
    ...opts.env,
  };
  const config = loadConfig(env);
  const kv = await Deno.openKv(config.kvPath);
  // As main.ts starts: the schema brought to this build's before anything is served.
  await migrateSchema(kv, { log: silentLogger });
  const router = createApp({
    kv: opts.wrapKv?.(kv) ?? kv,
    config,
    providersFile: opts.providersFile ?? null,
    env,
    log: opts.log ?? silentLogger,
    now: opts.now,
    sweepEveryMs: 200,
    webhooks: opts.webhooks,
    stripe: opts.stripe,
  });
  // Served as main.ts serves it: the client's address resolved behind TRUSTED_PROXIES.
  const server = serveLoopback(trustingProxies(router.app.fetch, config.trustedProxies));
  const url = server.origin;
  const request = (
    auth: string,
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ) =>
    fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${auth}`, "content-type": "application/json", ...headers },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
  const t: TestRouter = {
    url,
    router,
    kv,
    openai,
    admin: (m, p, b, h) => request(ADMIN_TOKEN, m, p, b, h),
    call: request,
    async account(credit = "10", keySpec = {}) {
      const res = await t.admin("POST", "/v1/admin/accounts", { name: "Test Co" });
      assert.equal(res.status, 201);
      const acct = await res.json();
      if (credit !== "0") {
        const adj = await t.admin("POST", `/v1/admin/accounts/${acct.id}/adjustments`, {
          amount: credit,
          reason: "test credit",
        });
        assert.equal(adj.status, 201);
        await adj.body?.cancel();
      }
      const k = await request(acct.management_key, "POST", "/v1/keys", {
        name: "test key",
        ...keySpec,
      });
      assert.equal(k.status, 201);
      const key = await k.json();
      return { id: acct.id, mgmt: acct.management_key, key: key.key, keyId: key.id };
    },
    async assertBooks() {
      await router.flush();
      const res = await t.admin("GET", "/v1/admin/verify");
      const v = await res.json();
      assert.equal(v.pending_events, 0, "every usage event is recorded");
      assert.deepEqual(v.differences, [], "balance = Σ ledger and reserved = Σ holds");
      assert.equal(v.ok, true);
    },
    async close() {
      await server.close();
      await router.flush();
      await router.close();
      kv.close();
      await router.svc.background.listener;
      await openai.close();
    },
  };
  return t;
}

/** Polls `check` until it returns a value other than null, or fails after `ms`. */
export async function until<T>(
  what: string,
  ms: number,
  check: () => Promise<T | null> | T | null,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== null) return v;
    assert.ok(Date.now() < end, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Reads a JSON response, asserting its status first (with the body in the message). */
export async function json(res: Response, status: number) {
  const text = await res.text();
  assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Every KV entry (key and value as text), once all pending work is recorded. */
export type KvSnapshot = Map<string, string>;

const snapshotText = (v: unknown) =>
  JSON.stringify(v, (_k, x) => typeof x === "bigint" ? `${x}n` : x);

/** The router's KV contents after a flush: equal snapshots mean nothing was written. */
export async function kvSnapshot(t: TestRouter): Promise<KvSnapshot> {
  await t.router.flush();
  const out: KvSnapshot = new Map();
  for await (const e of t.kv.list({ prefix: [] })) {
    out.set(snapshotText(e.key), snapshotText(e.value));
  }
  return out;
}

/**
 * Asserts that nothing but the refusal's own audit trail changed: no money, hold, ledger, key
 * or rollup entry was written. `audited` is how many audit rows the refusals may add.
 */
export function assertNothingWritten(before: KvSnapshot, after: KvSnapshot, audited: number) {
  const added: string[] = [];
  for (const [k, v] of after) {
    if (!before.has(k)) added.push(k);
    else assert.equal(v, before.get(k), `${k} changed`);
  }
  for (const k of before.keys()) assert.ok(after.has(k), `${k} was deleted`);
  const prefixes = added.map((k) => JSON.parse(k)[0]);
  assert.deepEqual(
    prefixes.filter((p) => p !== "audit" && p !== "audit_id"),
    [],
    "only audit rows were added",
  );
  assert.equal(prefixes.filter((p) => p === "audit").length, audited);
}

/** Headers of a dashboard session's request: its cookie, this origin, its CSRF token. */
function sessionHeaders(t: TestRouter, token: string, csrf: string) {
  return (h: Record<string, string> = {}) => ({
    cookie: `${SESSION_COOKIE}=${token}`,
    origin: t.url,
    "x-csrf-token": csrf,
    ...h,
  });
}

/** A signed-up user (the owner of a new account) with a dashboard session. */
export async function userSession(t: TestRouter, email: string) {
  const u = await signUp(t.kv, {
    email,
    name: email,
    password: "password-" + email,
    accountName: email + " Co",
  }, Date.now());
  assert.ok(u);
  const { token, session } = await createSession(t.kv, {
    kind: "user",
    user_id: u.user.id,
    account_id: u.account.id,
  }, Date.now());
  return { ...u, token, csrf: session.csrf, headers: sessionHeaders(t, token, session.csrf) };
}

/** An operator session, opened with the test ADMIN_TOKEN. */
export async function adminSession(t: TestRouter) {
  const { token, session } = await createSession(t.kv, {
    kind: "admin",
    admin_tag: await adminTokenTag(ADMIN_TOKEN),
  }, Date.now());
  return { token, csrf: session.csrf, headers: sessionHeaders(t, token, session.csrf) };
}
