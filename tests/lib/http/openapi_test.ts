import assert from "node:assert/strict";
import Stripe from "stripe";
import { Ajv2020 } from "ajv/dist/2020.js";
import { json, startRouter, type TestRouter } from "../../_helpers.ts";
import { startReceiver } from "../../_fakes/receiver.ts";

const STRIPE_SECRET = "whsec_openapi_test_0123456789";

/** JSON Pointer escaping of one path segment. */
const ptr = (s: string) => s.replaceAll("~", "~0").replaceAll("/", "~1");

/**
 * Checks live answers against the router's own OpenAPI document: each answer's body must match
 * the schema the document gives for its operation, status and content type; `covered` names the
 * operations whose success answer was checked.
 */
class Conformance {
  readonly ajv = new Ajv2020({ strict: false, allErrors: true });
  readonly covered = new Set<string>();
  readonly operations: string[];

  constructor(readonly t: TestRouter, readonly doc: Record<string, unknown>) {
    this.ajv.addSchema(doc, "doc");
    const paths = doc.paths as Record<string, Record<string, unknown>>;
    this.operations = Object.entries(paths).flatMap(([path, ops]) =>
      Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`)
    );
  }

  /** The documented operation of a concrete path: its template matched segment by segment. */
  operationOf(method: string, path: string): { template: string; op: Record<string, unknown> } {
    const paths = this.doc.paths as Record<string, Record<string, Record<string, unknown>>>;
    const segs = path.split("?")[0].split("/");
    for (const [template, ops] of Object.entries(paths)) {
      const t = template.split("/");
      if (t.length !== segs.length) continue;
      if (!t.every((s, i) => s.startsWith("{") || s === segs[i])) continue;
      const op = ops[method.toLowerCase()];
      if (op) return { template, op };
    }
    throw new Error(`${method} ${path} is not in the document`);
  }

  /** Sends a request, checks its answer against the document, and returns the answer. */
  async check(
    res: Response,
    method: string,
    path: string,
  ): Promise<{ status: number; body: unknown }> {
    const { template, op } = this.operationOf(method, path);
    const status = String(res.status);
    const responses = op.responses as Record<string, { content?: Record<string, unknown> }>;
    assert.ok(responses[status], `${method} ${template} answered ${status}, not documented`);
    const type = (res.headers.get("content-type") ?? "").split(";")[0].trim();
    const content = responses[status].content ?? {};
    assert.ok(content[type], `${method} ${template} ${status} answered ${type}, not documented`);
    const text = await res.text();
    const body = type === "application/json" ? JSON.parse(text) : text;
    const at = `doc#/paths/${ptr(template)}/${method.toLowerCase()}/responses/${status}/content/` +
      `${ptr(type)}/schema`;
    const validate = this.ajv.getSchema(at);
    assert.ok(validate, `no schema at ${at}`);
    assert.ok(
      validate(body),
      `${method} ${path} ${status}: ${JSON.stringify(validate.errors)}\n${text.slice(0, 500)}`,
    );
    if (res.status < 300) this.covered.add(`${method} ${template}`);
    return { status: res.status, body };
  }

  async call(
    auth: string | null,
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ) {
    const res = await fetch(this.t.url + path, {
      method,
      headers: {
        ...(auth ? { authorization: `Bearer ${auth}` } : {}),
        "content-type": "application/json",
        ...headers,
      },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    return await this.check(res, method, path);
  }
}

Deno.test("every documented endpoint answers as GET /v1/openapi.json says, errors included", async () => {
  const t = await startRouter({ env: { STRIPE_WEBHOOK_SECRET: STRIPE_SECRET } });
  const rx = startReceiver();
  try {
    const docRes = await fetch(t.url + "/v1/openapi.json");
    assert.equal(docRes.status, 200);
    const doc = await docRes.json();
    assert.equal(doc.openapi, "3.1.0");
    const api = new Conformance(t, doc);
    const admin = "test-admin-token-0123456789";
    const mgmtCall = (
      ...a: Parameters<Conformance["call"]> extends [unknown, ...infer R] ? R : never
    ) => api.call(mgmt, ...a);

    // Admin.
    const made = await api.call(admin, "POST", "/v1/admin/accounts", { name: "Docs Co" }, {
      "idempotency-key": "docs-1",
    });
    const acct = made.body as { id: string; management_key: string };
    const mgmt = acct.management_key;
    await api.call(admin, "GET", "/v1/admin/accounts");
    await api.call(admin, "GET", `/v1/admin/accounts/${acct.id}`);
    await api.call(admin, "POST", `/v1/admin/accounts/${acct.id}/adjustments`, {
      amount: "20",
      reason: "welcome",
    });
    await api.call(admin, "POST", `/v1/admin/accounts/${acct.id}/refunds`, {
      amount: "1.5",
      reason: "goodwill",
      reference: "case-7",
    });
    await api.call(admin, "GET", "/v1/admin/verify");
    await api.call(admin, "GET", "/v1/admin/stats");
    await api.call(null, "GET", "/v1/admin/verify");
    await api.call(admin, "GET", "/v1/admin/accounts/acct_nope");

    // Keys.
    const created = await mgmtCall("POST", "/v1/keys", { name: "ci", credit_limit: "5" });
    const key = created.body as { id: string; key: string };
    await mgmtCall("GET", "/v1/keys");
    await mgmtCall("GET", `/v1/keys/${key.id}`);
    await mgmtCall("PATCH", `/v1/keys/${key.id}`, { name: "ci-2", limit_reset: "daily" });
    await mgmtCall("POST", "/v1/keys", { name: "" });
    await mgmtCall("GET", "/v1/keys/key_00000000000000000000000000");
    await api.call(key.key, "GET", "/v1/keys");

    // Inference, for usage and an audit trail.
    await api.call(key.key, "POST", "/v1/chat/completions", {
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
    });
    await api.call(key.key, "POST", "/v1/embeddings", {
      model: "openai/text-embedding-3-small",
      input: "hello",
    });
    await api.call(key.key, "POST", "/v1/messages", {
      model: "openai/gpt-4o-mini",
      max_tokens: 64,
      messages: [{ role: "user", content: "hi" }],
    });
    await api.call(key.key, "POST", "/v1/messages/count_tokens", {
      model: "openai/gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
    });
    await api.call(key.key, "POST", "/v1/responses", { model: "openai/gpt-4o-mini", input: "hi" });
    await api.call(key.key, "POST", "/v1/chat/completions", { model: "", messages: [] });
    await t.router.flush();

    // Credits, ledger, usage, audit.
    await mgmtCall("GET", "/v1/credits");
    await mgmtCall("GET", "/v1/transactions?limit=2");
    await mgmtCall("GET", "/v1/transactions?limit=0");
    for (const g of ["date", "key", "provider", "model"]) {
      await mgmtCall("GET", `/v1/usage?group_by=${g}`);
    }
    await mgmtCall("GET", `/v1/keys/${key.id}/usage?group_by=model`);
    await mgmtCall("GET", "/v1/audit?limit=1");
    const rows = (await mgmtCall("GET", "/v1/audit?limit=100")).body as {
      data: { request_id: string }[];
    };
    const requestId = rows.data.at(-1)!.request_id;
    await mgmtCall("GET", `/v1/audit/${requestId}`);
    await mgmtCall("GET", "/v1/audit/export?format=csv");
    await mgmtCall("GET", "/v1/audit/export?format=json");

    // Billing and statements (development billing: the credit at once).
    await mgmtCall("GET", "/v1/billing/packages");
    await mgmtCall("POST", "/v1/billing/checkout", { package_id: "starter" });
    await mgmtCall("POST", "/v1/billing/checkout", { package_id: "nope" });
    const month = new Date().toISOString().slice(0, 7);
    await mgmtCall("GET", `/v1/statements/${month}`);
    await mgmtCall("GET", `/v1/statements/${month}?format=csv`);
    await mgmtCall("GET", "/v1/statements/2999-01");

    // Spend controls (development billing: a Stripe test card saved at once).
    await mgmtCall("GET", "/v1/billing/payment_method");
    await mgmtCall("PUT", "/v1/billing/auto_topup", { enabled: true, threshold: "5" });
    await mgmtCall("POST", "/v1/billing/payment_method");
    await mgmtCall("GET", "/v1/billing/payment_method");
    await mgmtCall("PUT", "/v1/billing/auto_topup", {
      enabled: true,
      threshold: "5",
      amount: "10",
      monthly_cap: "50",
    });
    await mgmtCall("GET", "/v1/billing/auto_topup");
    await mgmtCall("PUT", "/v1/alerts", { low_balance_threshold: "100" });
    await mgmtCall("PUT", "/v1/alerts", { low_balance_threshold: "-1" });
    await mgmtCall("GET", "/v1/alerts");
    await mgmtCall("PUT", "/v1/billing/auto_topup", { enabled: false });
    await mgmtCall("DELETE", "/v1/billing/payment_method");

    // Customer webhooks.
    const hook = (await mgmtCall("POST", "/v1/webhooks", {
      url: rx.url,
      events: ["credits.purchased"],
    })).body as { id: string; secret: string };
    rx.secret = hook.secret;
    await mgmtCall("GET", "/v1/webhooks");
    await mgmtCall("GET", `/v1/webhooks/${hook.id}`);
    await mgmtCall("PATCH", `/v1/webhooks/${hook.id}`, { events: ["credits.refunded"] });
    await mgmtCall("POST", `/v1/webhooks/${hook.id}/test`);
    await mgmtCall("GET", `/v1/webhooks/${hook.id}/deliveries`);
    await mgmtCall("DELETE", `/v1/webhooks/${hook.id}`);
    await mgmtCall("GET", `/v1/webhooks/${hook.id}`);

    // Stripe's webhook: signed, and not.
    const payload = JSON.stringify({ id: "evt_docs", object: "event", type: "ping", data: {} });
    const signature = await Stripe.webhooks.generateTestHeaderStringAsync({
      payload,
      secret: STRIPE_SECRET,
      cryptoProvider: Stripe.createSubtleCryptoProvider(),
    });
    await api.call(null, "POST", "/v1/stripe/webhook", payload, { "stripe-signature": signature });
    await api.call(null, "POST", "/v1/stripe/webhook", payload, { "stripe-signature": "t=1,v1=0" });

    await mgmtCall("DELETE", `/v1/keys/${key.id}`);
    await t.assertBooks();

    // Every documented operation was seen answering as documented.
    assert.deepEqual(api.operations.filter((o) => !api.covered.has(o)), []);
  } finally {
    await rx.close();
    await t.close();
  }
});

Deno.test("GET /docs renders the document as one page: every operation and schema, no script", async () => {
  const t = await startRouter();
  try {
    const doc = await json(await fetch(t.url + "/v1/openapi.json"), 200);
    const res = await fetch(t.url + "/docs");
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /text\/html/);
    const html = await res.text();
    assert.doesNotMatch(html, /<script/);
    assert.doesNotMatch(html, /https?:\/\/(?!127\.0\.0\.1)[^"]*\.(js|css)/);
    for (const [path, ops] of Object.entries(doc.paths as Record<string, object>)) {
      for (const method of Object.keys(ops)) {
        assert.ok(html.includes(`${method.toUpperCase()} ${path}`), `${method} ${path} listed`);
      }
    }
    for (const name of Object.keys(doc.components.schemas)) {
      assert.ok(html.includes(`id="schema-${name}"`), `schema ${name} shown`);
    }
  } finally {
    await t.close();
  }
});
