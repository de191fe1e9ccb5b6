import { z } from "zod";
import { requireKey } from "../../lib/http/auth.ts";
import { ApiError, notFound } from "../../lib/errors.ts";
import { parseJson, readJson } from "../../lib/http/errors.ts";
import {
  apiRoutes,
  documented,
  errorResponses,
  jsonBody,
  jsonResponse,
  SECURITY,
} from "../../lib/http/openapi.ts";
import {
  AlertsSchema,
  AutoTopupSchema,
  CardDeletedSchema,
  CardSchema,
} from "../../lib/http/presenters.ts";
import { usdAmount } from "../../lib/http/params.ts";
import { formatUsd, NANOS_PER_USD } from "../../lib/money.ts";
import { autoTopupKey } from "../../lib/kv/schema.ts";
import { checkoutIdempotencyKey } from "../../lib/billing/stripe/checkout.ts";
import { NANOS_PER_CENT } from "../../lib/billing/stripe/client.ts";
import {
  type AutoTopup,
  autoTopupJson,
  cardJson,
  getCard,
  MIN_TOPUP,
  updateAutoTopup,
} from "../../lib/billing/topup/records.ts";
import {
  createSetupSession,
  forgetCard,
  saveTestCard,
  TEST_CARDS,
  type TestCard,
} from "../../lib/billing/topup/payment_method.ts";
import {
  activeAlerts,
  getAlertSettings,
  putLowBalanceThreshold,
} from "../../lib/billing/alerts.ts";
import { stripeFailure } from "./billing.ts";

const usd = (n: bigint) => n * NANOS_PER_USD;
/** A USD amount within [min, max]; `cents`: whole cents (what Stripe charges). */
const usdRange = (min: bigint, max: bigint, cents = false) =>
  usdAmount.refine((v) => v >= min && v <= max, {
    message: `must be from ${formatUsd(min)} to ${formatUsd(max)} USD`,
  }).refine((v) => !cents || v % NANOS_PER_CENT === 0n, "must be whole cents");

export const AutoTopupUpdate = z.strictObject({
  enabled: z.boolean().optional(),
  threshold: usdRange(0n, usd(1_000_000n)).optional(),
  amount: usdRange(MIN_TOPUP, usd(10_000n), true).optional(),
  monthly_cap: usdRange(MIN_TOPUP, usd(1_000_000n), true).optional(),
}).meta({ id: "AutoTopupUpdate" });

export const CardSave = z.strictObject({
  // Development only: which of Stripe's test cards to save (a declined one tests failures).
  payment_method: z.enum(Object.keys(TEST_CARDS) as [TestCard, ...TestCard[]]).optional(),
}).meta({ id: "CardSave" });

export const AlertsUpdate = z.strictObject({
  low_balance_threshold: usdRange(0n, usd(1_000_000n)).nullable(),
}).meta({ id: "AlertsUpdate" });

/** Spend controls: the saved card, auto top-up and the account's alerts. */
export default function spendRoutes() {
  const app = apiRoutes();
  for (const path of ["/billing/payment_method", "/billing/auto_topup", "/alerts"]) {
    app.use(path, requireKey("management"));
  }
  const security = SECURITY.management;
  const refusals = errorResponses(400, 401, 403);

  documented(app, {
    method: "get",
    path: "/billing/payment_method",
    tags: ["Spend controls"],
    summary: "The saved card auto top-up charges",
    security,
    responses: {
      200: jsonResponse(CardSchema, "The card"),
      ...refusals,
      ...errorResponses(404),
    },
  }, async (c) => {
    const card = await getCard(c.get("svc").kv, c.get("accountId"));
    if (!card) throw notFound("The saved card");
    return c.json(cardJson(card));
  });

  documented(app, {
    method: "post",
    path: "/billing/payment_method",
    tags: ["Spend controls"],
    summary: "Saves a card: a Stripe Checkout Session in setup mode (production), or a Stripe " +
      "test card at once (development billing; the body may name which)",
    security,
    request: { body: { ...jsonBody(CardSave), required: false } },
    responses: {
      200: jsonResponse(
        z.strictObject({ url: z.string() }),
        "Production: the setup session to send the customer to",
      ),
      201: jsonResponse(CardSchema, "Development: the test card saved"),
      ...refusals,
      ...errorResponses(409, 502, 503, 504),
    },
  }, async (c) => {
    const svc = c.get("svc");
    const accountId = c.get("accountId");
    // The body is optional: `{}` or none.
    const raw = await c.req.text();
    const body = raw.trim() ? parseJson(raw, CardSave) : {};
    if (svc.config.billingMode === "development") {
      const card = await saveTestCard(svc, accountId, body.payment_method ?? "pm_card_visa");
      return c.json(cardJson(card), 201);
    }
    const stripe = svc.stripe;
    if (!stripe) throw new ApiError(503, "checkout_unavailable", "Stripe is not configured");
    try {
      const session = await createSetupSession(svc, stripe, {
        accountId,
        origin: svc.config.publicUrl ?? new URL(c.req.url).origin,
        idempotencyKey: "setup-" + await checkoutIdempotencyKey(
          accountId,
          c.req.header("idempotency-key"),
          c.get("requestId"),
        ),
      });
      return c.json({ url: session.url });
    } catch (e) {
      throw stripeFailure(svc, e, "setup session");
    }
  });

  documented(app, {
    method: "delete",
    path: "/billing/payment_method",
    tags: ["Spend controls"],
    summary: "Forgets the saved card",
    security,
    responses: {
      200: jsonResponse(CardDeletedSchema, "The card forgotten"),
      ...refusals,
      ...errorResponses(404),
    },
  }, async (c) => {
    const card = await forgetCard(c.get("svc"), c.get("accountId"));
    if (!card) throw notFound("The saved card");
    c.get("svc").spend.forget(c.get("accountId"));
    return c.json({ ...cardJson(card), deleted: true as const });
  });

  documented(app, {
    method: "get",
    path: "/billing/auto_topup",
    tags: ["Spend controls"],
    summary: "Auto top-up's settings and state",
    security,
    responses: { 200: jsonResponse(AutoTopupSchema, "The settings and state"), ...refusals },
  }, async (c) => {
    const svc = c.get("svc");
    const e = await svc.kv.get<AutoTopup>(autoTopupKey(c.get("accountId")));
    return c.json(autoTopupJson(e.value, svc.now()));
  });

  documented(app, {
    method: "put",
    path: "/billing/auto_topup",
    tags: ["Spend controls"],
    summary: "Changes auto top-up (fields left out keep their value); enabling needs a saved card",
    security,
    request: { body: jsonBody(AutoTopupUpdate) },
    responses: {
      200: jsonResponse(AutoTopupSchema, "The settings and state as changed"),
      ...refusals,
      ...errorResponses(409),
    },
  }, async (c) => {
    const svc = c.get("svc");
    const accountId = c.get("accountId");
    const next = await updateAutoTopup(svc, accountId, await readJson(c, AutoTopupUpdate));
    if (next === "payment_method_required") {
      throw new ApiError(
        409,
        "payment_method_required",
        "Save a card first (POST /v1/billing/payment_method): auto top-up charges it",
      );
    }
    if (next === "conflict") {
      throw new ApiError(409, "conflict", "Auto top-up changed while it was being updated; retry");
    }
    svc.spend.forget(accountId);
    return c.json(autoTopupJson(next, svc.now()));
  });

  documented(app, {
    method: "get",
    path: "/alerts",
    tags: ["Spend controls"],
    summary: "The low-balance threshold and the alerts active now",
    security,
    responses: { 200: jsonResponse(AlertsSchema, "The threshold and active alerts"), ...refusals },
  }, async (c) => {
    const svc = c.get("svc");
    const accountId = c.get("accountId");
    const [settings, active] = await Promise.all([
      getAlertSettings(svc.kv, accountId),
      activeAlerts(svc, accountId),
    ]);
    const t = settings.value?.low_balance_threshold ?? null;
    return c.json({ low_balance_threshold: t === null ? null : formatUsd(t), active });
  });

  documented(app, {
    method: "put",
    path: "/alerts",
    tags: ["Spend controls"],
    summary: "Sets (or clears, with null) the low-balance threshold",
    security,
    request: { body: jsonBody(AlertsUpdate) },
    responses: { 200: jsonResponse(AlertsSchema, "The threshold and active alerts"), ...refusals },
  }, async (c) => {
    const svc = c.get("svc");
    const accountId = c.get("accountId");
    const { low_balance_threshold } = await readJson(c, AlertsUpdate);
    await putLowBalanceThreshold(svc, accountId, low_balance_threshold);
    svc.spend.forget(accountId);
    return c.json({
      low_balance_threshold: low_balance_threshold === null
        ? null
        : formatUsd(low_balance_threshold),
      active: await activeAlerts(svc, accountId),
    });
  });

  return app;
}
