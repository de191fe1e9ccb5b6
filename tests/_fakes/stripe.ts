/**
 * A real HTTP server on 127.0.0.1 that speaks the part of Stripe's API the router calls
 * (customers, Checkout Sessions in payment and setup mode, SetupIntents, PaymentMethods,
 * PaymentIntents, including off-session ones charging a saved card, with their charge's receipt,
 * charges, refunds: form-encoded bodies, bearer auth, idempotency keys), plus what Stripe itself
 * does around it: the customer paying or saving a card, refunds, disputes, and signed webhook
 * events (signed with the `stripe` library's own test signer).
 */
import Stripe from "stripe";
import { serveLoopback } from "./serve.ts";

export interface RecordedRequest {
  method: string;
  path: string;
  /** The decoded form body (nested as Stripe's bracket notation says), or the query for GETs. */
  body: Record<string, unknown>;
  headers: Record<string, string>;
}

type Obj = Record<string, unknown>;

export interface FakeStripe {
  url: string;
  /** Every API request received, in order. */
  requests: RecordedRequest[];
  /** When set, every API call answers this status with a Stripe error body. */
  failWith: number | null;
  /** How long creating a PaymentIntent takes (a bank that answers slowly). */
  intentDelayMs: number;
  customers: Map<string, Obj>;
  sessions: Map<string, Obj>;
  charges: Map<string, Obj>;
  /** PaymentIntents of completed sessions; `latest_charge` names the charge once paid. */
  paymentIntents: Map<string, Obj>;
  refunds: Obj[];
  /** The customer finishes Checkout: card payments are paid, async methods complete unpaid. */
  complete(sessionId: string, opts?: { paid?: boolean }): Obj;
  /** An async payment of a completed session succeeds. */
  asyncPaymentSucceeds(sessionId: string): Obj;
  /**
   * Refunds `amount` cents of the charge of a session (or of a PaymentIntent, by its `pi_` id);
   * returns the updated charge.
   */
  refund(sessionId: string, amount: number): Obj;
  /**
   * The bank returns a refund: its status becomes `failed` and the charge's refunded amount
   * drops by it, as Stripe does. Returns the refund as the failure events carry it.
   */
  failRefund(refundId: string): Obj;
  disputes: Map<string, Obj>;
  /**
   * The cardholder disputes `amount` cents (the whole charge by default) of the session's charge.
   * A card dispute withdraws the funds at once (the withdrawal is among its balance transactions);
   * with `withdrawn: false` it is opened without (an inquiry, or funds not yet moved). Returns the
   * dispute as the events carry it.
   */
  dispute(sessionId: string, opts?: { amount?: number; withdrawn?: boolean; status?: string }): Obj;
  /** The disputed funds are withdrawn (if not yet). */
  withdrawDispute(disputeId: string): Obj;
  /**
   * The dispute is closed: `won` reinstates the funds; `lost` reinstates `reinstate` cents if
   * given (a dispute of a partially refunded payment: the refunded part comes back).
   */
  closeDispute(disputeId: string, outcome: "won" | "lost", reinstate?: number): Obj;
  paymentMethods: Map<string, Obj>;
  setupIntents: Map<string, Obj>;
  /**
   * The customer saves a card in a `setup` session: a PaymentMethod (`visa` succeeds; `declined`
   * is declined and `authentication` needs authentication when charged off-session) attached to
   * the session's customer by a succeeded SetupIntent. Returns the completed session.
   */
  completeSetup(sessionId: string, card?: FakeCard): Obj;
  /** The PaymentIntent as Stripe shows it now. */
  paymentIntent(id: string): Obj;
  /** An Event object wrapping `object`, as Stripe sends it. */
  event(type: string, object: Obj): Obj;
  /** The raw payload and `Stripe-Signature` header of an event. */
  sign(
    event: Obj,
    secret: string,
    opts?: { timestamp?: number },
  ): Promise<{ payload: string; header: string }>;
  close(): Promise<void>;
}

/** The saved cards the fake knows, by how an off-session charge of them ends. */
export type FakeCard = "visa" | "declined" | "authentication";
const CARDS: Record<FakeCard, { brand: string; last4: string }> = {
  visa: { brand: "visa", last4: "4242" },
  declined: { brand: "visa", last4: "0002" },
  authentication: { brand: "visa", last4: "3155" },
};

const cryptoProvider = Stripe.createSubtleCryptoProvider();
let counter = 0;
const newId = (prefix: string) =>
  `${prefix}_test_${(++counter).toString(36).padStart(6, "0")}${
    crypto.randomUUID().replaceAll("-", "").slice(0, 12)
  }`;

/** Decodes `a[b][0][c]=v` form fields into nested objects and arrays. */
export function parseForm(params: URLSearchParams): Obj {
  const root: Obj = {};
  for (const [name, value] of params) {
    const path = name.replace(/\]/g, "").split("[");
    let node: Record<string, unknown> | unknown[] = root;
    for (let i = 0; i < path.length; i++) {
      const part = path[i];
      const last = i === path.length - 1;
      const key: string | number = Array.isArray(node) ? Number(part) : part;
      const container = node as Record<string | number, unknown>;
      if (last) container[key] = value;
      else {
        if (container[key] === undefined) container[key] = /^\d+$/.test(path[i + 1]) ? [] : {};
        node = container[key] as Obj;
      }
    }
  }
  return root;
}

const now = () => Math.floor(Date.now() / 1000);
/** The opaque tail of a receipt URL. */
const receiptToken = () => crypto.randomUUID().replaceAll("-", "");

function stripeError(status: number, type: string, message: string, extra: Obj = {}) {
  return Response.json({ error: { type, message, ...extra } }, { status });
}

export function startFakeStripe(): FakeStripe {
  const idempotent = new Map<string, { body: string; status: number; json: unknown }>();

  const fake: FakeStripe = {
    url: "",
    requests: [],
    failWith: null,
    intentDelayMs: 0,
    customers: new Map(),
    sessions: new Map(),
    charges: new Map(),
    paymentIntents: new Map(),
    refunds: [],
    disputes: new Map(),
    paymentMethods: new Map(),
    setupIntents: new Map(),
    completeSetup(sessionId, card = "visa") {
      const s = fake.sessions.get(sessionId);
      if (!s || s.mode !== "setup") throw new Error(`no setup session ${sessionId}`);
      const pm = {
        id: newId("pm"),
        object: "payment_method",
        type: "card",
        created: now(),
        customer: s.customer,
        card: { ...CARDS[card], exp_month: 12, exp_year: new Date().getUTCFullYear() + 4 },
        metadata: {},
      };
      fake.paymentMethods.set(pm.id, pm);
      const si = {
        id: newId("seti"),
        object: "setup_intent",
        status: "succeeded",
        customer: s.customer,
        payment_method: pm.id,
        created: now(),
        usage: "off_session",
        metadata: { ...(s.setup_intent_metadata as Obj) },
      };
      fake.setupIntents.set(si.id, si);
      s.status = "complete";
      s.setup_intent = si.id;
      return publicSession(s);
    },
    paymentIntent(id) {
      return structuredClone(fake.paymentIntents.get(id)!);
    },
    dispute(sessionId, opts = {}) {
      const s = fake.sessions.get(sessionId)!;
      const charge = [...fake.charges.values()].find((c) => c.payment_intent === s.payment_intent)!;
      const d = {
        id: newId("dp"),
        object: "dispute",
        amount: opts.amount ?? charge.amount,
        balance_transactions: [] as Obj[],
        charge: charge.id,
        currency: charge.currency,
        created: now(),
        is_charge_refundable: false,
        livemode: false,
        metadata: {},
        payment_intent: charge.payment_intent,
        reason: "fraudulent",
        status: opts.status ?? "needs_response",
      };
      fake.disputes.set(d.id, d);
      charge.disputed = true;
      if (opts.withdrawn ?? true) return fake.withdrawDispute(d.id);
      return structuredClone(d);
    },
    withdrawDispute(disputeId) {
      const d = fake.disputes.get(disputeId)!;
      const txs = d.balance_transactions as Obj[];
      if (!txs.some((t) => (t.amount as number) < 0)) {
        txs.push(balanceTransaction(d, -(d.amount as number), "Chargeback withdrawal"));
      }
      return structuredClone(d);
    },
    closeDispute(disputeId, outcome, reinstate) {
      const d = fake.disputes.get(disputeId)!;
      d.status = outcome;
      const back = outcome === "won" ? d.amount as number : reinstate ?? 0;
      if (back > 0) {
        (d.balance_transactions as Obj[]).push(
          balanceTransaction(d, back, "Chargeback reversal"),
        );
      }
      return structuredClone(d);
    },
    complete(sessionId, opts = {}) {
      const s = fake.sessions.get(sessionId);
      if (!s) throw new Error(`no session ${sessionId}`);
      const paid = opts.paid ?? true;
      const pi = newId("pi");
      s.status = "complete";
      s.payment_status = paid ? "paid" : "unpaid";
      s.payment_intent = pi;
      fake.paymentIntents.set(pi, {
        id: pi,
        object: "payment_intent",
        amount: s.amount_total,
        currency: s.currency,
        customer: s.customer,
        status: paid ? "succeeded" : "processing",
        latest_charge: null,
        metadata: { ...(s.payment_intent_metadata as Obj) },
      });
      if (paid) chargeFor(s);
      return publicSession(s);
    },
    asyncPaymentSucceeds(sessionId) {
      const s = fake.sessions.get(sessionId)!;
      s.payment_status = "paid";
      chargeFor(s);
      return publicSession(s);
    },
    refund(sessionId, amount) {
      const pi = sessionId.startsWith("pi_")
        ? sessionId
        : fake.sessions.get(sessionId)!.payment_intent;
      const charge = [...fake.charges.values()].find((c) => c.payment_intent === pi)!;
      const refund = {
        id: newId("re"),
        object: "refund",
        amount,
        charge: charge.id,
        currency: "usd",
        created: now(),
        payment_intent: charge.payment_intent,
        status: "succeeded",
        metadata: {},
      };
      fake.refunds.push(refund);
      charge.amount_refunded = (charge.amount_refunded as number) + amount;
      charge.refunded = charge.amount_refunded === charge.amount;
      // As on current API versions, the charge in the event does not embed its refunds.
      return structuredClone(charge);
    },
    failRefund(refundId) {
      const refund = fake.refunds.find((r) => r.id === refundId);
      if (!refund) throw new Error(`no refund ${refundId}`);
      refund.status = "failed";
      refund.failure_reason = "expired_or_canceled_card";
      const charge = fake.charges.get(refund.charge as string)!;
      charge.amount_refunded = (charge.amount_refunded as number) - (refund.amount as number);
      charge.refunded = false;
      return structuredClone(refund);
    },
    event(type, object) {
      return {
        id: newId("evt"),
        object: "event",
        api_version: "2026-10-28.endive",
        created: now(),
        livemode: false,
        pending_webhooks: 1,
        request: { id: null, idempotency_key: null },
        type,
        data: { object },
      };
    },
    async sign(event, secret, opts = {}) {
      const payload = JSON.stringify(event, null, 2);
      const header = await Stripe.webhooks.generateTestHeaderStringAsync({
        payload,
        secret,
        timestamp: opts.timestamp,
        cryptoProvider,
      });
      return { payload, header };
    },
    close: () => server.close(),
  };

  /** The session as Stripe shows it (without what the fake keeps for the charge). */
  function publicSession(s: Obj): Obj {
    const { payment_intent_metadata: _, setup_intent_metadata: __, ...rest } = s;
    return structuredClone(rest);
  }

  /** A charge paying PaymentIntent `pi` (in full), which succeeds with it. */
  function newCharge(pi: Obj): Obj {
    const charge = {
      id: newId("ch"),
      object: "charge",
      amount: pi.amount,
      amount_captured: pi.amount,
      amount_refunded: 0,
      currency: pi.currency,
      customer: pi.customer,
      paid: true,
      refunded: false,
      status: "succeeded",
      payment_intent: pi.id,
      created: now(),
      metadata: { ...(pi.metadata as Obj) },
      receipt_url: `https://pay.stripe.com/receipts/payment/${receiptToken()}`,
    };
    fake.charges.set(charge.id, charge);
    pi.status = "succeeded";
    pi.amount_received = pi.amount;
    pi.latest_charge = charge.id;
    return charge;
  }

  /**
   * Creates (and, with `confirm`, confirms) a PaymentIntent. Off-session, a saved card is charged
   * at once: declined, or needing authentication, it answers 402 with the PaymentIntent in the
   * error, as Stripe does.
   */
  function createIntent(body: Obj): Response {
    const pmId = body.payment_method as string | undefined;
    const pm = pmId ? fake.paymentMethods.get(pmId) : undefined;
    if (pmId && !pm) return missing("payment_method", pmId, "payment_method");
    if (pm && pm.customer !== body.customer) {
      return stripeError(400, "invalid_request_error", "The PaymentMethod is not the customer's", {
        param: "payment_method",
      });
    }
    const pi: Obj = {
      id: newId("pi"),
      object: "payment_intent",
      amount: Number(body.amount),
      amount_received: 0,
      currency: body.currency,
      customer: body.customer ?? null,
      payment_method: pmId ?? null,
      description: body.description ?? null,
      status: "requires_confirmation",
      latest_charge: null,
      last_payment_error: null,
      created: now(),
      livemode: false,
      metadata: body.metadata ?? {},
    };
    fake.paymentIntents.set(pi.id as string, pi);
    if (body.confirm !== "true" || !pm) return Response.json(expandIntent(pi, body));
    const last4 = (pm.card as Obj).last4;
    const fail = last4 === CARDS.declined.last4
      ? {
        code: "card_declined",
        decline_code: "generic_decline",
        status: "requires_payment_method",
      }
      : last4 === CARDS.authentication.last4
      ? { code: "authentication_required", decline_code: undefined, status: "requires_action" }
      : null;
    if (!fail) {
      newCharge(pi);
      return Response.json(expandIntent(pi, body));
    }
    pi.status = fail.status;
    pi.last_payment_error = {
      type: "card_error",
      code: fail.code,
      decline_code: fail.decline_code,
      message: "The card was not charged",
      payment_method: structuredClone(pm),
    };
    return stripeError(402, "card_error", "The card was not charged", {
      code: fail.code,
      decline_code: fail.decline_code,
      payment_intent: structuredClone(pi),
    });
  }

  /** The PaymentIntent with `latest_charge` expanded when the request asked for it. */
  function expandIntent(pi: Obj, body: Obj): Obj {
    const expand = (body.expand ?? []) as string[];
    const charge = expand.includes("latest_charge") && pi.latest_charge
      ? fake.charges.get(pi.latest_charge as string)
      : pi.latest_charge;
    return structuredClone({ ...pi, latest_charge: charge });
  }

  function balanceTransaction(d: Obj, amount: number, what: string): Obj {
    return {
      id: newId("txn"),
      object: "balance_transaction",
      amount,
      currency: d.currency,
      created: now(),
      description: `${what} for ${d.charge}`,
      fee: amount < 0 ? 1500 : 0,
      net: amount < 0 ? amount - 1500 : amount,
      reporting_category: amount < 0 ? "dispute" : "dispute_reversal",
      source: d.id,
      status: "pending",
      type: "adjustment",
    };
  }

  function chargeFor(s: Obj) {
    newCharge(fake.paymentIntents.get(s.payment_intent as string)!);
  }

  function route(method: string, path: string, body: Obj): Response {
    if (method === "POST" && path === "/v1/customers") {
      const c = {
        id: newId("cus"),
        object: "customer",
        created: now(),
        name: body.name ?? null,
        email: body.email ?? null,
        metadata: body.metadata ?? {},
      };
      fake.customers.set(c.id, c);
      return Response.json(c);
    }
    let m = /^\/v1\/customers\/([^/]+)$/.exec(path);
    if (method === "GET" && m) {
      const c = fake.customers.get(m[1]);
      return c ? Response.json(c) : missing("customer", m[1]);
    }
    m = /^\/v1\/customers\/([^/]+)$/.exec(path);
    if (method === "POST" && m) {
      const c = fake.customers.get(m[1]);
      if (!c) return missing("customer", m[1]);
      Object.assign(c, body);
      return Response.json(c);
    }
    if (method === "POST" && path === "/v1/checkout/sessions") {
      if (body.mode !== "payment" && body.mode !== "setup") {
        return stripeError(400, "invalid_request_error", "Only payment and setup are faked", {
          param: "mode",
        });
      }
      if (body.customer && !fake.customers.has(body.customer as string)) {
        return missing("customer", body.customer as string, "customer");
      }
      if (body.mode === "setup") {
        const id = newId("cs");
        const s = {
          id,
          object: "checkout.session",
          mode: "setup",
          status: "open",
          payment_status: "no_payment_required",
          currency: body.currency ?? null,
          customer: body.customer ?? null,
          client_reference_id: body.client_reference_id ?? null,
          metadata: body.metadata ?? {},
          setup_intent: null,
          success_url: body.success_url,
          cancel_url: body.cancel_url,
          url: `https://checkout.stripe.test/c/setup/${id}`,
          created: now(),
          livemode: false,
        };
        const sid = body.setup_intent_data as Obj | undefined;
        fake.sessions.set(id, { ...s, setup_intent_metadata: sid?.metadata ?? {} });
        return Response.json(s);
      }
      const items = (body.line_items ?? []) as Obj[];
      let total = 0;
      let currency = "usd";
      for (const item of items) {
        const pd = item.price_data as Obj;
        total += Number(pd.unit_amount) * Number(item.quantity ?? 1);
        currency = pd.currency as string;
      }
      const id = newId("cs");
      const pid = body.payment_intent_data as Obj | undefined;
      const s = {
        id,
        object: "checkout.session",
        mode: "payment",
        status: "open",
        payment_status: "unpaid",
        amount_subtotal: total,
        amount_total: total,
        currency,
        customer: body.customer ?? null,
        client_reference_id: body.client_reference_id ?? null,
        metadata: body.metadata ?? {},
        payment_intent: null,
        success_url: body.success_url,
        cancel_url: body.cancel_url,
        url: `https://checkout.stripe.test/c/pay/${id}`,
        created: now(),
        livemode: false,
      };
      fake.sessions.set(id, { ...s, payment_intent_metadata: pid?.metadata ?? {} });
      return Response.json(s);
    }
    m = /^\/v1\/checkout\/sessions\/([^/]+)$/.exec(path);
    if (method === "GET" && m) {
      const s = fake.sessions.get(m[1]);
      return s ? Response.json(publicSession(s)) : missing("checkout.session", m[1]);
    }
    if (method === "POST" && path === "/v1/payment_intents") return createIntent(body);
    m = /^\/v1\/payment_intents\/([^/]+)\/cancel$/.exec(path);
    if (method === "POST" && m) {
      const pi = fake.paymentIntents.get(m[1]);
      if (!pi) return missing("payment_intent", m[1]);
      if (pi.status === "succeeded") {
        return stripeError(
          400,
          "invalid_request_error",
          "A succeeded PaymentIntent cannot be canceled",
        );
      }
      pi.status = "canceled";
      return Response.json(pi);
    }
    m = /^\/v1\/setup_intents\/([^/]+)$/.exec(path);
    if (method === "GET" && m) {
      const si = fake.setupIntents.get(m[1]);
      if (!si) return missing("setup_intent", m[1]);
      const expand = (body.expand ?? []) as string[];
      const pm = expand.includes("payment_method")
        ? fake.paymentMethods.get(si.payment_method as string)
        : si.payment_method;
      return Response.json({ ...si, payment_method: pm });
    }
    m = /^\/v1\/payment_methods\/([^/]+)(\/detach)?$/.exec(path);
    if (m) {
      const pm = fake.paymentMethods.get(m[1]);
      if (!pm) return missing("payment_method", m[1]);
      if (method === "POST" && m[2]) pm.customer = null;
      return Response.json(pm);
    }
    m = /^\/v1\/payment_intents\/([^/]+)$/.exec(path);
    if (method === "GET" && m) {
      const pi = fake.paymentIntents.get(m[1]);
      if (!pi) return missing("payment_intent", m[1]);
      const expand = (body.expand ?? []) as string[];
      const charge = expand.includes("latest_charge") && pi.latest_charge
        ? fake.charges.get(pi.latest_charge as string)
        : pi.latest_charge;
      return Response.json({ ...pi, latest_charge: charge });
    }
    m = /^\/v1\/charges\/([^/]+)$/.exec(path);
    if (method === "GET" && m) {
      const c = fake.charges.get(m[1]);
      return c ? Response.json(c) : missing("charge", m[1]);
    }
    if (method === "GET" && path === "/v1/refunds") {
      const data = fake.refunds.filter((r) => !body.charge || r.charge === body.charge)
        .sort((a, b) => (b.created as number) - (a.created as number));
      return Response.json({ object: "list", url: "/v1/refunds", has_more: false, data });
    }
    return stripeError(
      404,
      "invalid_request_error",
      `Unrecognized request URL (${method}: ${path})`,
    );
  }

  function missing(what: string, id: string, param?: string) {
    // A missing object named by a parameter is 400; a missing object at its own URL is 404.
    return stripeError(param ? 400 : 404, "invalid_request_error", `No such ${what}: '${id}'`, {
      code: "resource_missing",
      param,
    });
  }

  const server = serveLoopback(
    async (req) => {
      const url = new URL(req.url);
      const text = await req.text();
      const body = parseForm(req.method === "GET" ? url.searchParams : new URLSearchParams(text));
      const headers = Object.fromEntries(req.headers);
      fake.requests.push({ method: req.method, path: url.pathname, body, headers });
      if (!/^Bearer sk_(test|live)_\S+$/.test(headers.authorization ?? "")) {
        return stripeError(401, "invalid_request_error", "Invalid API Key provided");
      }
      if (fake.failWith !== null) {
        return stripeError(fake.failWith, "api_error", "The fake is told to fail");
      }
      const key = headers["idempotency-key"];
      if (req.method === "POST" && key) {
        const seen = idempotent.get(key);
        if (seen) {
          if (seen.body !== text) {
            return stripeError(
              400,
              "idempotency_error",
              "Keys for idempotent requests can only be used with the same parameters",
            );
          }
          return Response.json(seen.json, {
            status: seen.status,
            headers: { "idempotent-replayed": "true" },
          });
        }
      }
      if (req.method === "POST" && url.pathname === "/v1/payment_intents" && fake.intentDelayMs) {
        await new Promise((r) => setTimeout(r, fake.intentDelayMs));
      }
      const res = route(req.method, url.pathname, body);
      if (req.method === "POST" && key && res.status < 500) {
        const json = await res.clone().json();
        idempotent.set(key, { body: text, status: res.status, json });
      }
      return res;
    },
  );
  fake.url = server.origin;
  return fake;
}
