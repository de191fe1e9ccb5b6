/**
 * Thousands of generated malformed requests over every endpoint (inference, management, billing,
 * admin, the Stripe webhook, pages, static files), one after the other from one seeded generator:
 * `FUZZ_SEED=n` replays a run (a failure prints its seed and the request), `FUZZ_COUNT=n` sends
 * more. Asserted: no 5xx, every `/v1/*` 4xx a JSON error, and KV unchanged but for audit rows and
 * sign-in attempt counters. The main account has no credit, so an inference request that is
 * well-formed after all is refused at its hold; every write a valid credential could make gets a
 * body or id broken on purpose. Some inference requests use a funded account's key instead, so
 * that they reach the providers (translated, streamed) and are billed: that account's books are
 * checked rather than left unwritten.
 */
import assert from "node:assert/strict";
import {
  ADMIN_TOKEN,
  adminSession,
  kvSnapshot,
  type TestRouter,
  userSession,
} from "../_helpers.ts";
import { newId } from "../../lib/ids.ts";
import { startProviders } from "../_providers.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20261207);
const COUNT = Number(Deno.env.get("FUZZ_COUNT") ?? 4000);

/** mulberry32: a small seeded generator, so a run replays exactly. */
class Rand {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  next(): number {
    let t = (this.#s += 0x6d2b79f5);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
}

interface Req {
  method: string;
  path: string;
  headers: [string, string][];
  body?: string;
}

/** What the generator may present: the real credentials and ids of the run. */
interface World {
  key: string;
  keyId: string;
  mgmt: string;
  accountId: string;
  user: { headers: () => Record<string, string>; csrf: string; userId: string };
  admin: { headers: () => Record<string, string>; csrf: string };
  otherScopeKey: string;
  /** The router's own origin, as a browser's same-origin form sends it. */
  origin: string;
  /** An inference key of an account with credit, and that account. */
  fundedKey: string;
  fundedAccountId: string;
}

const HUGE = (r: Rand) => "x".repeat(2049 + r.int(3000));

/** Values of the wrong type, size or form for any field. */
function oddValue(r: Rand, depth = 0): unknown {
  switch (r.int(16)) {
    case 0:
      return r.pick([1e308, -1e308, 9007199254740993, -1, 0, 1.5, -0.000000001, 2 ** 64]);
    case 1:
      return r.pick(["NaN", "Infinity", "-Infinity", "1e999", "0x10", "1_000", " 1", "١٢٣", ""]);
    case 2:
      return r.pick([true, false, null]);
    case 3:
      return "y".repeat(r.pick([257, 1000, 10_000, 100_000]));
    case 4:
      return depth < 2 ? [oddValue(r, depth + 1), oddValue(r, depth + 1)] : [];
    case 5:
      return depth < 2
        ? { [r.pick(["a", "__proto__", "constructor", ""])]: oddValue(r, depth + 1) }
        : {};
    case 6:
      return r.chance(0.7)
        ? nested(r.pick([50, 129, 1000, 20_000]), r.chance(0.5))
        // JSON text nested deep inside a string (a tool call's arguments, a tool result).
        : '{"a":'.repeat(5000) + '"١"' + "}".repeat(5000);
    case 7:
      return r.pick(["=cmd|' /C calc'!A0", "+1", "-1", "@SUM(1)", "\t", "\r\n"]);
    case 8:
      return r.pick(["\u0000", "\ud800", "\uffff", "ǅ", "日本語", "🚀".repeat(100)]);
    case 9:
      return r.pick([
        "99999999999999999999999999",
        "-99999999999999999999.999999999",
        "0.0000000001",
      ]);
    case 10:
      return r.pick([newId("key"), newId("acct"), newId("req"), "key_nope", "acct_", "req_.1"]);
    case 11:
      return HUGE(r);
    case 12:
      return r.pick([
        "2026-02-30",
        "0000-01-01",
        "275760-09-14",
        "9999-12-31T23:59:59Z",
        "yesterday",
      ]);
    case 13:
      return r.pick(["openai/gpt-4o-mini", "gpt-4o-mini", "nope/x", "openai/", "/", "openai//x"]);
    case 14:
      return r.int(1_000_000);
    default:
      return r.pick(["inference", "management", "daily", "stream", "user", "system", "tool"]);
  }
}

/**
 * Arrays or objects nested `depth` deep around a non-ASCII text: recursion in anything that walks
 * or writes out a body meets it. Held as a placeholder until `toJson` writes it (JSON.stringify
 * itself can overflow the stack on it).
 */
const nested = (depth: number, objects: boolean): unknown => ({ __nested: depth, objects });

/** JSON text of `v`, each `nested` placeholder written out as its arrays or objects. */
const toJson = (v: unknown): string =>
  JSON.stringify(v).replace(
    /\{"__nested":(\d+),"objects":(true|false)\}/g,
    (_, d, o) =>
      o === "true"
        ? '{"a":'.repeat(Number(d)) + '"١"' + "}".repeat(Number(d))
        : "[".repeat(Number(d)) + '"١"' + "]".repeat(Number(d)),
  );

/** JSON text that does not parse (or parses to something no endpoint takes). */
function badJsonText(r: Rand): string {
  return r.pick([
    "",
    "{",
    '{"model":',
    "{'model': 'x'}",
    '{"a":1}x',
    "NaN",
    "[1,]",
    '{"a":1,}',
    "\ufeff{}",
    "null",
    "[]",
    "1e999",
    '"string"',
    "\u0000",
    "[".repeat(100_000),
    '{"a":"\\ud800"}',
  ]);
}

/** Every (container, key) inside `v`: where a mutation may strike, at any depth. */
function places(v: unknown, out: [Record<string, unknown> | unknown[], string | number][] = []) {
  if (Array.isArray(v)) v.forEach((x, i) => (out.push([v, i]), places(x, out)));
  else if (v && typeof v === "object" && !("__nested" in v)) {
    for (const [k, x] of Object.entries(v)) {
      out.push([v as Record<string, unknown>, k]), places(x, out);
    }
  }
  return out;
}

/** `base` (a fresh shape) with 1 to 3 of its fields, at any depth, replaced, removed or added. */
function mutated(r: Rand, base: Record<string, unknown>): Record<string, unknown> {
  for (let n = 1 + r.int(3); n > 0; n--) {
    const all = places(base);
    const [at, k] = all.length ? r.pick(all) : [base, "x"];
    const op = r.int(4);
    if (op === 0) {
      if (Array.isArray(at)) at.splice(k as number, 1);
      else delete at[k as string];
    } else if (op === 1 && !Array.isArray(at)) {
      at[r.pick(["extra", "stream", "max_tokens", "n", "tools", "user", "type", "content"])] =
        oddValue(r);
    } else (at as Record<string | number, unknown>)[k] = oddValue(r);
  }
  return base;
}

type BodyKind =
  | "chat"
  | "messages"
  | "embeddings"
  | "responses"
  | "count"
  | "key"
  | "keyPatch"
  | "account"
  | "credit"
  | "checkout"
  | "topup"
  | "alerts"
  | "webhook";

const CHAT_MODELS = [
  "openai/gpt-4o-mini",
  "gpt-4o-mini",
  "anthropic/claude-haiku-4-5",
  "claude-haiku-4-5",
  "google/gemini-2.5-flash",
];
/** Each body kind as its endpoint takes it (models of every provider, streams or not). */
const SHAPES: Record<BodyKind, (r: Rand) => Record<string, unknown>> = {
  chat: (r) => ({
    model: r.pick(CHAT_MODELS),
    messages: [
      { role: "system", content: "be brief" },
      { role: "user", content: [{ type: "text", text: "hi" }] },
      {
        role: "assistant",
        content: null,
        tool_calls: [{ id: "call_1", type: "function", function: { name: "f", arguments: "{}" } }],
      },
      { role: "tool", tool_call_id: "call_1", content: '{"ok":true}' },
    ],
    tools: [{ type: "function", function: { name: "f", parameters: { type: "object" } } }],
    max_tokens: 16,
    stream: r.chance(0.3),
    stream_options: { include_usage: true },
  }),
  messages: (r) => ({
    model: r.pick(CHAT_MODELS),
    max_tokens: 16,
    system: [{ type: "text", text: "be brief" }],
    messages: [
      { role: "user", content: [{ type: "text", text: "hi" }] },
      { role: "assistant", content: [{ type: "tool_use", id: "t1", name: "f", input: { x: 1 } }] },
      { role: "user", content: [{ type: "tool_result", tool_use_id: "t1", content: "ok" }] },
    ],
    stream: r.chance(0.3),
  }),
  embeddings: () => ({ model: "text-embedding-3-small", input: ["a", "b"] }),
  responses: (r) => ({
    model: "gpt-4o-mini",
    input: [{ role: "user", content: [{ type: "input_text", text: "hi" }] }],
    max_output_tokens: 16,
    stream: r.chance(0.3),
  }),
  count: (r) => ({
    model: r.pick(CHAT_MODELS),
    system: "be brief",
    messages: [{ role: "user", content: [{ type: "text", text: "hi" }] }],
  }),
  key: () => ({ name: "k", scope: "inference", credit_limit: "1", limit_reset: "daily" }),
  keyPatch: () => ({ name: "k", disabled: false, rate_limit_rpm: 10 }),
  account: () => ({ name: "Acme", email: "a@example.com" }),
  credit: () => ({ amount: "1", reason: "r", reference: "x" }),
  checkout: () => ({ package_id: "starter" }),
  topup: () => ({ enabled: false, threshold: "5", amount: "25", monthly_cap: "100" }),
  alerts: () => ({ low_balance_threshold: "5" }),
  webhook: () => ({ id: "evt_1", type: "checkout.session.completed", data: { object: {} } }),
};

/**
 * A body of `kind` that its endpoint must refuse whatever the credential: text that is not JSON,
 * JSON that is not an object, or an object with a field no schema there allows (all strict).
 */
function brokenBody(r: Rand, kind: BodyKind): string {
  switch (r.int(3)) {
    case 0:
      return badJsonText(r);
    case 1:
      return toJson(r.pick([[], 1, "x", null, [SHAPES[kind](r)]]));
    default:
      return toJson({
        ...mutated(r, SHAPES[kind](r)),
        ["unknown_" + r.int(9)]: oddValue(r),
      });
  }
}

/** Any body of `kind`: mostly its shape, mutated; sometimes as it should be, or no JSON at all. */
function anyBody(r: Rand, kind: BodyKind): string {
  if (r.chance(0.2)) return badJsonText(r);
  return toJson(r.chance(0.2) ? SHAPES[kind](r) : mutated(r, SHAPES[kind](r)));
}

/** An id for a path: well-formed of nothing, malformed, over-long or a bad escape. */
function oddId(r: Rand, prefix: string): string {
  return r.pick([
    newId(prefix),
    `${newId(prefix)}.1`,
    `${prefix}_nope`,
    encodeURIComponent(HUGE(r)),
    `${prefix}_${"0".repeat(2100)}`,
    "%ff",
    "%e2%82",
    "..%2f..%2fetc",
    "%00",
    encodeURIComponent("日本"),
    "a".repeat(64),
  ]);
}

const QUERY_NAMES = [
  "limit",
  "cursor",
  "from",
  "to",
  "key_id",
  "provider",
  "model",
  "status",
  "streaming",
  "format",
  "type",
  "group_by",
  "interval",
  "next",
  "v",
  "done",
  "verify",
  "purchased",
];

/** A query string of odd parameters (repeated names, bad escapes, odd values). */
function oddQuery(r: Rand): string {
  if (r.chance(0.3)) return "";
  const parts: string[] = [];
  for (let n = 1 + r.int(4); n > 0; n--) {
    const name = r.pick(QUERY_NAMES);
    const v = r.chance(0.1) ? r.pick(["%ff", "%", "%e2%82%", "%zz"]) : encodeURIComponent(
      // Short enough for a URL any client sends (an over-long URL is the server's own refusal).
      String(
        r.pick([
          oddValue(r),
          "-1",
          "0",
          "1001",
          "1e3",
          "csv",
          "json",
          "xml",
          "true",
          "maybe",
          "hour",
          "date",
          btoa(JSON.stringify([-1, "req_x"])),
          btoa(JSON.stringify([1e300, "x".repeat(3000)])),
          "-".repeat(2000),
        ]),
      ).slice(0, 2500).toWellFormed(),
    );
    parts.push(`${name}=${v}`);
  }
  return "?" + parts.join("&");
}

type Auth = "inference" | "management" | "admin" | "session" | "adminSession" | "none";

interface Endpoint {
  method: string;
  /** The path, given an id maker: real ids only where nothing can be written with them. */
  path: (id: (prefix: string) => string) => string;
  auth: Auth;
  body?: BodyKind | "form";
  /** A request with the right credential may write: its body or id is always broken. */
  writes?: boolean;
}

const ENDPOINTS: Endpoint[] = [
  { method: "POST", path: () => "/v1/chat/completions", auth: "inference", body: "chat" },
  { method: "POST", path: () => "/v1/messages", auth: "inference", body: "messages" },
  { method: "POST", path: () => "/v1/messages/count_tokens", auth: "inference", body: "count" },
  { method: "POST", path: () => "/v1/embeddings", auth: "inference", body: "embeddings" },
  { method: "POST", path: () => "/v1/responses", auth: "inference", body: "responses" },
  { method: "GET", path: () => "/v1/models", auth: "none" },
  { method: "GET", path: (id) => `/v1/models/${id("model")}`, auth: "none" },
  { method: "GET", path: () => "/v1/key", auth: "inference" },
  { method: "GET", path: () => "/v1/credits", auth: "management" },
  { method: "GET", path: () => "/v1/keys", auth: "management" },
  { method: "POST", path: () => "/v1/keys", auth: "management", body: "key", writes: true },
  { method: "GET", path: (id) => `/v1/keys/${id("key")}`, auth: "management" },
  {
    method: "PATCH",
    path: (id) => `/v1/keys/${id("key")}`,
    auth: "management",
    body: "keyPatch",
    writes: true,
  },
  { method: "DELETE", path: (id) => `/v1/keys/${id("key")}`, auth: "management", writes: true },
  { method: "GET", path: (id) => `/v1/keys/${id("key")}/usage`, auth: "management" },
  { method: "GET", path: () => "/v1/usage", auth: "management" },
  { method: "GET", path: () => "/v1/transactions", auth: "management" },
  { method: "GET", path: () => "/v1/audit", auth: "management" },
  { method: "GET", path: () => "/v1/audit/export", auth: "management" },
  { method: "GET", path: (id) => `/v1/audit/${id("req")}`, auth: "management" },
  { method: "GET", path: () => "/v1/billing/packages", auth: "management" },
  {
    method: "POST",
    path: () => "/v1/billing/checkout",
    auth: "management",
    body: "checkout",
    writes: true,
  },
  { method: "GET", path: () => "/v1/billing/payment_method", auth: "management" },
  { method: "GET", path: () => "/v1/billing/auto_topup", auth: "management" },
  {
    method: "PUT",
    path: () => "/v1/billing/auto_topup",
    auth: "management",
    body: "topup",
    writes: true,
  },
  { method: "GET", path: () => "/v1/alerts", auth: "management" },
  { method: "PUT", path: () => "/v1/alerts", auth: "management", body: "alerts", writes: true },
  { method: "POST", path: () => "/v1/stripe/webhook", auth: "none", body: "webhook" },
  {
    method: "POST",
    path: () => "/v1/admin/accounts",
    auth: "admin",
    body: "account",
    writes: true,
  },
  { method: "GET", path: () => "/v1/admin/accounts", auth: "admin" },
  { method: "GET", path: (id) => `/v1/admin/accounts/${id("acct")}`, auth: "admin" },
  ...["adjustments", "refunds"].map((sub): Endpoint => ({
    method: "POST",
    path: (id) => `/v1/admin/accounts/${id("acct")}/${sub}`,
    auth: "admin",
    body: "credit",
    writes: true,
  })),
  { method: "GET", path: () => "/v1/admin/verify", auth: "admin" },
  { method: "GET", path: () => "/v1/nothing", auth: "none" },
  { method: "GET", path: () => "/v1/openapi.json", auth: "none" },
  // Pages and files.
  ...["/", "/signup", "/signin", "/healthz", "/favicon.ico", "/dashboard/settings", "/docs"].map(
    (p): Endpoint => ({ method: "GET", path: () => p, auth: "none" }),
  ),
  ...[
    "/dashboard",
    "/dashboard/usage",
    "/dashboard/keys",
    "/dashboard/audit",
    "/dashboard/settings/billing",
    "/dashboard/settings/members",
    "/dashboard/nowhere",
  ].map((p): Endpoint => ({ method: "GET", path: () => p, auth: "session" })),
  { method: "GET", path: () => "/dashboard/admin", auth: "adminSession" },
  {
    method: "GET",
    path: (id) => `/dashboard/admin/accounts/${id("acct")}`,
    auth: "adminSession",
  },
  ...["app.css", "build/client.js", "%ff", "..%2f..%2fdeno.json", "nope.css", "a/../app.css"].map(
    (f): Endpoint => ({ method: "GET", path: () => `/static/${f}`, auth: "none" }),
  ),
  { method: "POST", path: () => "/signin", auth: "none", body: "form" },
  { method: "POST", path: () => "/signup", auth: "none", body: "form" },
  { method: "POST", path: () => "/dashboard/admin/signin", auth: "none", body: "form" },
  { method: "POST", path: () => "/signout", auth: "session", body: "form", writes: true },
  { method: "POST", path: () => "/dashboard/switch", auth: "session", body: "form", writes: true },
  {
    method: "POST",
    path: () => "/dashboard/settings/members",
    auth: "session",
    body: "form",
    writes: true,
  },
  {
    method: "POST",
    path: (id) => `/dashboard/admin/accounts/${id("acct")}`,
    auth: "adminSession",
    body: "form",
    writes: true,
  },
];

/** A form of odd fields; `valid` adds the session's CSRF token (the form is broken otherwise). */
function oddForm(r: Rand, csrf: string | null): string {
  const form = new URLSearchParams();
  const names = ["email", "password", "name", "account", "next", "token", "account_id", "remove"];
  for (const n of names) {
    if (r.chance(0.5)) continue;
    const v = r.pick([
      String(oddValue(r)),
      "not-an-email",
      "x@y",
      "short",
      "x".repeat(300) + "@example.com",
      "//evil.example",
      "/\t/evil.example",
    ]);
    form.append(n, v);
    if (r.chance(0.1)) form.append(n, v + "2");
  }
  if (r.chance(0.5)) {
    form.append("type", r.pick(["adjustment", "refund", "x"]));
    form.append("amount", String(oddValue(r)));
    form.append("nonce", r.pick(["form_", "form_" + "a".repeat(50), String(oddValue(r))]));
  }
  if (csrf !== null) form.append("_csrf", csrf);
  return form.toString();
}

/** Header values fetch can send: Latin-1 without CR, LF or NUL. */
const headerSafe = (s: string) => s.replace(/[^\x20-\x7e\x80-\xff\t]/g, "?").slice(0, 6000);

/** The endpoints to pick from: inference ones (the most code behind them) five times over. */
const PICKS = ENDPOINTS.flatMap((ep) => Array(ep.auth === "inference" ? 5 : 1).fill(ep));

function generate(r: Rand, w: World): Req {
  const ep: Endpoint = r.pick(PICKS);
  const headers: [string, string][] = [];
  const credential = r.chance(0.6) ? "valid" : r.pick([
    "missing",
    "garbage",
    "scheme",
    "huge",
    "other",
    "duplicate",
    "both",
  ]);
  const valid = credential === "valid";
  let method = ep.method;
  if (r.chance(0.08)) method = r.pick(["PUT", "DELETE", "OPTIONS", "PATCH", "HEAD", "GET", "POST"]);
  const methodChanged = method !== ep.method;
  // On a writing endpoint (or under another method, which may reach one) the body or the ids are
  // always broken: the "bad" credentials include valid ones (a duplicate header, the admin token
  // on a key's route), so the credential cannot be what refuses it.
  const breakIt = ep.writes === true || methodChanged;
  // Real ids only where nothing can be written with them: a read, or a write whose body is broken.
  const realIds = !methodChanged && (!ep.writes || ep.body !== undefined);
  const id = (prefix: string) =>
    realIds && r.chance(0.3)
      ? (prefix === "key" ? w.keyId : prefix === "acct" ? w.accountId : newId(prefix))
      : prefix === "model"
      ? r.pick(["openai/gpt-4o-mini", "openai%2Fgpt-4o-mini", "x".repeat(3000), "%ff", "nope"])
      : oddId(r, prefix);
  const path = ep.path(id) + oddQuery(r);

  const bearer = (secret: string) => headers.push(["authorization", `Bearer ${secret}`]);
  const secretOf: Record<Auth, string | null> = {
    // A funded key's requests reach the providers (translated, streamed) and are billed.
    inference: r.chance(0.4) ? w.fundedKey : w.key,
    management: w.mgmt,
    admin: ADMIN_TOKEN,
    session: null,
    adminSession: null,
    none: null,
  };
  const secret = secretOf[ep.auth];
  if (ep.auth === "session" || ep.auth === "adminSession") {
    const s = ep.auth === "session" ? w.user : w.admin;
    if (valid || credential === "other") {
      for (const [k, v] of Object.entries(s.headers())) {
        if (k !== "x-csrf-token" || !breakIt) headers.push([k, v]);
      }
    } else if (credential !== "missing") {
      headers.push(["cookie", headerSafe(`__Host-session=${r.pick(["x", HUGE(r), "%ff;a=b"])}`)]);
    }
  } else if (secret !== null || ep.path(() => "").startsWith("/v1/")) {
    switch (credential) {
      case "valid":
        if (secret) bearer(secret);
        break;
      case "garbage":
        bearer(r.pick(["er-" + "a".repeat(43), "garbage", "er-", "adm-x", ADMIN_TOKEN + "x"]));
        break;
      case "scheme":
        headers.push(["authorization", r.pick(["Basic eDp5", "Bearer", "Bearer  a b", "bearer"])]);
        break;
      case "huge":
        bearer("er-" + "a".repeat(5000));
        break;
      case "other":
        bearer(r.pick([w.otherScopeKey, w.key, w.mgmt, ADMIN_TOKEN]));
        break;
      case "duplicate":
        bearer(secret ?? w.key);
        bearer(w.otherScopeKey);
        break;
      case "both":
        headers.push(["x-api-key", r.pick([w.key, w.mgmt, "garbage"])]);
        if (secret) bearer(secret);
        break;
    }
  }

  let body: string | undefined;
  if (ep.body === "form") {
    const csrf = ep.auth === "session"
      ? w.user.csrf
      : ep.auth === "adminSession"
      ? w.admin.csrf
      : null;
    // With the session's token a page form may write: its CSRF token is dropped then.
    body = oddForm(r, csrf !== null && !breakIt && r.chance(0.5) ? csrf : null);
    headers.push([
      "content-type",
      r.pick([
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/plain",
        "application/json",
      ]),
    ]);
    if (!headers.some(([k]) => k === "origin")) {
      headers.push(["origin", r.pick([w.origin, w.origin, "http://evil.example", "null", ""])]);
    }
  } else if (ep.body) {
    body = breakIt ? brokenBody(r, ep.body) : anyBody(r, ep.body);
    headers.push([
      "content-type",
      r.pick([
        "application/json",
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/json; charset=latin1",
      ]),
    ]);
  } else if (r.chance(0.1) && method !== "GET" && method !== "HEAD") {
    body = badJsonText(r);
  }
  if (method === "GET" || method === "HEAD") body = undefined;

  // A webhook signature of Stripe's form, stale, cut short or of another form.
  if (ep.body === "webhook" && r.chance(0.7)) {
    const t = Math.floor(Date.now() / 1000) - r.pick([0, 0, 1000, -1000]);
    headers.push([
      "stripe-signature",
      r.pick([
        `t=${t},v1=${"0".repeat(64)}`,
        `t=${t},v1=${"a".repeat(64)},v1=zz,v0=1`,
        "t=,v1=",
        `v1=x,t=${"9".repeat(30)}`,
        `t=${t}`,
        ",,,=,",
      ]),
    ]);
  }
  // Odd headers any request may carry.
  for (let n = r.int(3); n > 0; n--) {
    headers.push([
      r.pick([
        "idempotency-key",
        "user-agent",
        "anthropic-version",
        "anthropic-beta",
        "x-forwarded-for",
        "x-csrf-token",
        "accept",
        "accept-encoding",
        "stripe-signature",
        "sec-fetch-site",
        "x-request-id",
      ]),
      headerSafe(String(oddValue(r))),
    ]);
  }
  return { method, path, headers, body };
}

const show = (q: Req) =>
  JSON.stringify({
    ...q,
    body: q.body && q.body.length > 400 ? q.body.slice(0, 400) + "…" : q.body,
  })
    .slice(0, 3000);

/** KV entries a refused request may leave: its audit row, and the sign-in limits' counters. */
const ALLOWED = /^\["(audit|audit_id|signin_attempts|signin_failures)",/;
/** What is written for one account only (its books), by key text. */
const ofAccount = (k: string, accountId: string) => k.includes(`"${accountId}"`);

async function world(t: TestRouter): Promise<World> {
  // No credit: a request that turns out well-formed is refused at its hold.
  const acct = await t.account("0");
  const funded = await t.account("5");
  const other = await t.call(acct.mgmt, "POST", "/v1/keys", { name: "ops", scope: "management" });
  const user = await userSession(t, "fuzz@example.com");
  return {
    key: acct.key,
    keyId: acct.keyId,
    mgmt: acct.mgmt,
    accountId: acct.id,
    otherScopeKey: (await other.json()).key,
    user: { headers: user.headers, csrf: user.csrf, userId: user.user.id },
    admin: await adminSession(t),
    origin: t.url,
    fundedKey: funded.key,
    fundedAccountId: funded.id,
  };
}

Deno.test({
  name: `fuzz: ${COUNT} malformed requests over every endpoint: no 5xx, JSON errors, no writes`,
  // A body the router refuses before reading it (its Content-Length over a limit, or no key)
  // leaves fetch's own upload resource open on the client's side (STACK.md: unavoidable).
  sanitizeResources: false,
  async fn() {
    const t = await startProviders({ env: { STRIPE_WEBHOOK_SECRET: "whsec_fuzz" } });
    const started = Date.now();
    const statuses = new Map<number, number>();
    try {
      const w = await world(t);
      const before = await kvSnapshot(t);
      const r = new Rand(SEED);
      for (let i = 0; i < COUNT; i++) {
        const q = generate(r, w);
        const where = `FUZZ_SEED=${SEED}, request ${i}: ${show(q)}`;
        const res = await fetch(t.url + q.path, {
          method: q.method,
          headers: q.headers,
          body: q.body,
          redirect: "manual",
        });
        const text = await res.text();
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        assert.ok(res.status < 500, `${res.status} ${text.slice(0, 300)}\n${where}`);
        if (q.path.startsWith("/v1") && res.status >= 400 && q.method !== "HEAD") {
          let err: Record<string, unknown> | undefined;
          try {
            err = JSON.parse(text).error;
          } catch {
            // reported below
          }
          assert.ok(
            err && ["message", "type", "code"].every((f) => typeof err[f] === "string"),
            `${res.status} without a JSON error: ${text.slice(0, 300)}\n${where}`,
          );
        }
      }
      const after = await kvSnapshot(t);
      // The funded account's requests are billed: its books are checked below instead.
      const changed = [...after].filter(([k, v]) =>
        before.get(k) !== v && !ALLOWED.test(k) && !ofAccount(k, w.fundedAccountId)
      );
      const removed = [...before.keys()].filter((k) => !after.has(k));
      assert.deepEqual(changed.map(([k]) => k), [], `FUZZ_SEED=${SEED}: written`);
      assert.deepEqual(removed, [], `FUZZ_SEED=${SEED}: deleted`);
      await t.assertBooks();
    } finally {
      const answered = [...statuses].sort(([a], [b]) => a - b).map(([s, n]) => `${s}×${n}`);
      console.log(
        `FUZZ_SEED=${SEED} FUZZ_COUNT=${COUNT}: ${Date.now() - started} ms; ${answered.join(" ")}`,
      );
      await t.close();
    }
  },
});
