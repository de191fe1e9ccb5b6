import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv } from "../../lib/services.ts";
import { requireKey } from "../../lib/http/auth.ts";
import { ApiError, notFound, parseJson, readJson } from "../../lib/http/errors.ts";
import { usdAmount } from "../../lib/http/params.ts";
import { formatUsd, NANOS_PER_USD } from "../../lib/money.ts";
import { autoTopupKey } from "../../lib/kv/schema.ts";
import { checkoutIdempotencyKey, NANOS_PER_CENT, stripeClient } from "../../lib/billing/stripe.ts";
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

const topupSchema = z.strictObject({
  enabled: z.boolean().optional(),
  threshold: usdRange(0n, usd(1_000_000n)).optional(),
  amount: usdRange(MIN_TOPUP, usd(10_000n), true).optional(),
  monthly_cap: usdRange(MIN_TOPUP, usd(1_000_000n), true).optional(),
});

const cardSchema = z.strictObject({
  // Development only: which of Stripe's test cards to save (a declined one tests failures).
  payment_method: z.enum(Object.keys(TEST_CARDS) as [TestCard, ...TestCard[]]).optional(),
});

const alertsSchema = z.strictObject({
  low_balance_threshold: usdRange(0n, usd(1_000_000n)).nullable(),
});

/** Spend controls: the saved card, auto top-up and the account's alerts. */
export function spendRoutes() {
  const app = new Hono<AppEnv>();
  for (const path of ["/billing/payment_method", "/billing/auto_topup", "/alerts"]) {
    app.use(path, requireKey("management"));
  }

  app.get("/billing/payment_method", async (c) => {
    const card = await getCard(c.get("svc").kv, c.get("accountId"));
    if (!card) throw notFound("The saved card");
    return c.json(cardJson(card));
  });

  app.post("/billing/payment_method", async (c) => {
    const svc = c.get("svc");
    const accountId = c.get("accountId");
    // The body is optional: `{}` or none.
    const raw = await c.req.text();
    const body = raw.trim() ? parseJson(raw, cardSchema) : {};
    if (svc.config.billingMode === "development") {
      const card = await saveTestCard(svc, accountId, body.payment_method ?? "pm_card_visa");
      return c.json(cardJson(card), 201);
    }
    const stripe = stripeClient(svc.config);
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

  app.delete("/billing/payment_method", async (c) => {
    const card = await forgetCard(c.get("svc"), c.get("accountId"));
    if (!card) throw notFound("The saved card");
    c.get("svc").spend.forget(c.get("accountId"));
    return c.json({ ...cardJson(card), deleted: true });
  });

  app.get("/billing/auto_topup", async (c) => {
    const svc = c.get("svc");
    const e = await svc.kv.get<AutoTopup>(autoTopupKey(c.get("accountId")));
    return c.json(autoTopupJson(e.value, svc.now()));
  });

  app.put("/billing/auto_topup", async (c) => {
    const svc = c.get("svc");
    const accountId = c.get("accountId");
    const next = await updateAutoTopup(svc, accountId, await readJson(c, topupSchema));
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

  app.get("/alerts", async (c) => {
    const svc = c.get("svc");
    const accountId = c.get("accountId");
    const [settings, active] = await Promise.all([
      getAlertSettings(svc.kv, accountId),
      activeAlerts(svc, accountId),
    ]);
    const t = settings.value?.low_balance_threshold ?? null;
    return c.json({ low_balance_threshold: t === null ? null : formatUsd(t), active });
  });

  app.put("/alerts", async (c) => {
    const svc = c.get("svc");
    const accountId = c.get("accountId");
    const { low_balance_threshold } = await readJson(c, alertsSchema);
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
