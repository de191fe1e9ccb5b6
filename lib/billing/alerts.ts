/**
 * Spend alerts: the account's low-balance threshold (`balance.low`), each key's thresholds as
 * fractions of its credit limit (`key.limit_threshold`), and what is active now (the dashboard's
 * banner, `GET /v1/alerts`). Each alert is decided by one check-and-set that emits its event in the
 * same atomic, so it fires once however many processes see the crossing.
 */
import type { SpendDeps } from "./spend_deps.ts";
import { alertsKey, autoTopupKey, keyAlertKey } from "../kv/schema.ts";
import { commitRetrying } from "../kv/util.ts";
import { formatUsd } from "../money.ts";
import { accountEvent, emitEvent, latestEvent } from "../webhooks/events.ts";
import { listKeysByAccount } from "../auth/keys.ts";
import { getBalanceView } from "./views.ts";
import { type ApiKey, DEFAULT_ALERT_BP } from "./types.ts";
import { type AutoTopup, creditTotal, MAX_FAILURES } from "./topup/records.ts";

/** ["alerts", accountId]: the low-balance threshold and when it last fired. */
export interface AlertSettings {
  /** `balance.low` fires when a settlement takes the balance below this; null: off. */
  low_balance_threshold: bigint | null;
  /**
   * When it last fired, and the account's credit total then: it fires again only after credit
   * arrived (the balance cannot rise otherwise), at the next crossing.
   */
  low_fired: { at: string; credit_mark: bigint } | null;
  updated_at: string;
}

/** ["key_alert", …]: one key threshold fired in one limit period, under this limit. */
export interface KeyAlertMark {
  credit_limit: bigint;
  spend: bigint;
  fired_at: string;
}

/** How long a refund or dispute of a payment shows in the banner. */
const TAKE_BACK_SHOWN_MS = 7 * 86_400_000;
/** How long a key's fired thresholds are remembered past their period's start (the longest is a month). */
const KEY_ALERT_TTL_MS = 62 * 86_400_000;

/** The account's alert settings with their versionstamp. */
export async function getAlertSettings(
  kv: Deno.Kv,
  accountId: string,
): Promise<Deno.KvEntryMaybe<AlertSettings>> {
  return await kv.get<AlertSettings>(alertsKey(accountId));
}

/**
 * Sets the low-balance threshold (null: off). Set while the balance is already below it, it fires
 * at the next crossing after the balance has risen above it, not at once.
 */
export async function putLowBalanceThreshold(
  svc: SpendDeps,
  accountId: string,
  threshold: bigint | null,
): Promise<AlertSettings> {
  for (let i = 0; i < 20; i++) {
    const e = await getAlertSettings(svc.kv, accountId);
    const [credit, balance] = await Promise.all([
      creditTotal(svc.kv, accountId),
      getBalanceView(svc.kv, accountId),
    ]);
    const now = new Date(svc.now()).toISOString();
    const next: AlertSettings = {
      low_balance_threshold: threshold,
      low_fired: threshold !== null && balance.balance < threshold
        ? { at: now, credit_mark: credit }
        : null,
      updated_at: now,
    };
    if ((await commitRetrying(svc.kv.atomic().check(e).set(e.key, next))).ok) return next;
  }
  throw new Error("the alert settings changed too often to be set");
}

/**
 * `balance.low`, if the account's balance (read afresh, leases counted in) is below its threshold
 * and the alert has not fired since credit last arrived. True when it fired.
 */
export async function fireLowBalance(svc: SpendDeps, accountId: string): Promise<boolean> {
  for (let i = 0; i < 20; i++) {
    const e = await getAlertSettings(svc.kv, accountId);
    const threshold = e.value?.low_balance_threshold ?? null;
    if (threshold === null) return false;
    const [credit, b] = await Promise.all([
      creditTotal(svc.kv, accountId),
      getBalanceView(svc.kv, accountId),
    ]);
    if (b.balance >= threshold || e.value!.low_fired?.credit_mark === credit) return false;
    const now = svc.now();
    const next: AlertSettings = {
      ...e.value!,
      low_fired: { at: new Date(now).toISOString(), credit_mark: credit },
    };
    const atomic = svc.kv.atomic().check(e).set(e.key, next);
    emitEvent(
      atomic,
      accountEvent(accountId, "balance.low", {
        balance: formatUsd(b.balance),
        threshold: formatUsd(threshold),
      }, now),
      svc.config.outboxDelivery,
    );
    if ((await commitRetrying(atomic)).ok) return true;
  }
  return false;
}

/**
 * `key.limit_threshold` for `key` at `bp` basis points of its limit in `period`, once: the mark of
 * (key, period, threshold) is set with the event, unless one under the same limit exists (a new
 * limit fires its thresholds anew). True when it fired.
 */
export async function fireKeyAlert(
  svc: SpendDeps,
  key: ApiKey,
  period: string,
  bp: number,
  spend: bigint,
): Promise<boolean> {
  const limit = key.credit_limit;
  if (limit === null) return false;
  const k = keyAlertKey(key.account_id, key.id, period, bp);
  for (let i = 0; i < 20; i++) {
    const e = await svc.kv.get<KeyAlertMark>(k);
    if (e.value && e.value.credit_limit === limit) return false;
    const now = svc.now();
    const mark: KeyAlertMark = {
      credit_limit: limit,
      spend,
      fired_at: new Date(now).toISOString(),
    };
    const atomic = svc.kv.atomic().check(e).set(k, mark, {
      // A limit that never resets has one period: its marks are kept.
      expireIn: period === "all" ? undefined : KEY_ALERT_TTL_MS,
    });
    emitEvent(
      atomic,
      accountEvent(key.account_id, "key.limit_threshold", {
        key_id: key.id,
        threshold: bp / 10_000,
        spend: formatUsd(spend),
        credit_limit: formatUsd(limit),
      }, now),
      svc.config.outboxDelivery,
    );
    if ((await commitRetrying(atomic)).ok) return true;
  }
  return false;
}

/** A key's thresholds, in basis points, ascending. */
export const alertBp = (key: ApiKey): readonly number[] => key.alert_bp ?? DEFAULT_ALERT_BP;

/** An alert active now, as `GET /v1/alerts` and the dashboard's banner show it. */
export type ActiveAlert =
  | { type: "balance.low"; balance: string; threshold: string }
  | {
    type: "key.limit_threshold";
    key_id: string;
    key_name: string;
    threshold: number;
    spend: string;
    credit_limit: string;
  }
  | {
    type: "auto_topup.failed";
    amount: string;
    reason: string | null;
    failures: number;
    disabled: boolean;
    at: string;
  }
  | { type: "credits.refunded"; amount: string; description: string; at: string };

/**
 * The alerts active now: the balance below the low-balance threshold; each live key at or past a
 * threshold of its limit this period (its highest); auto top-up's last attempt failed; a payment
 * refunded or disputed (credit taken back) within the last 7 days.
 */
export async function activeAlerts(svc: SpendDeps, accountId: string): Promise<ActiveAlert[]> {
  const { kv } = svc;
  const now = svc.now();
  const [settings, topup, balance, keys, refunded] = await Promise.all([
    getAlertSettings(kv, accountId),
    kv.get<AutoTopup>(autoTopupKey(accountId)),
    getBalanceView(kv, accountId),
    listKeysByAccount(kv, accountId, now),
    latestEvent(kv, accountId, "credits.refunded"),
  ]);
  const out: ActiveAlert[] = [];
  const low = settings.value?.low_balance_threshold ?? null;
  if (low !== null && balance.balance < low) {
    out.push({
      type: "balance.low",
      balance: formatUsd(balance.balance),
      threshold: formatUsd(low),
    });
  }
  for (const { key, spend } of keys) {
    const limit = key.credit_limit;
    if (limit === null || key.revoked_at !== null || limit <= 0n) continue;
    const used = key.limit_reset ? spend.period_spend : spend.spend;
    const reached = alertBp(key).filter((bp) => used * 10_000n >= limit * BigInt(bp)).at(-1);
    if (reached === undefined) continue;
    out.push({
      type: "key.limit_threshold",
      key_id: key.id,
      key_name: key.name,
      threshold: reached / 10_000,
      spend: formatUsd(used),
      credit_limit: formatUsd(limit),
    });
  }
  const last = topup.value?.last;
  if (last?.outcome === "failed") {
    out.push({
      type: "auto_topup.failed",
      amount: formatUsd(last.amount),
      reason: last.reason,
      failures: topup.value!.failures,
      disabled: !topup.value!.enabled && topup.value!.failures >= MAX_FAILURES,
      at: last.at,
    });
  }
  const data = refunded?.data as { amount?: string; description?: string } | undefined;
  if (
    refunded && data?.amount?.startsWith("-") &&
    now - Date.parse(refunded.timestamp) < TAKE_BACK_SHOWN_MS
  ) {
    out.push({
      type: "credits.refunded",
      amount: data.amount,
      description: data.description ?? "",
      at: refunded.timestamp,
    });
  }
  return out;
}
