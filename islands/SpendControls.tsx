import { useSignal } from "@preact/signals";
import { formatMoney, formatTime } from "../lib/render/format.ts";
import { api } from "../lib/render/api.ts";
import { useActions } from "../lib/render/actions.tsx";

/** The saved card as GET /v1/billing/payment_method shows it. */
export interface CardView {
  brand: string;
  last4: string;
  exp_month: number;
  exp_year: number;
}

/** Auto top-up as GET /v1/billing/auto_topup shows it. */
export interface TopupView {
  enabled: boolean;
  threshold: string;
  amount: string;
  monthly_cap: string;
  failures: number;
  this_month: string;
  in_flight: boolean;
  last: {
    outcome: "succeeded" | "failed";
    amount: string;
    reason: string | null;
    at: string;
  } | null;
}

export interface SpendControlsProps extends Record<string, unknown> {
  mode: "development" | "production";
  csrf: string;
  card: CardView | null;
  topup: TopupView;
  lowBalanceThreshold: string | null;
}

/** Development's test cards (Stripe's test PaymentMethods of the same names). */
const TEST_CARDS = [
  ["pm_card_visa", "Visa 4242 (pays)"],
  ["pm_card_chargeDeclined", "Visa 0002 (declined)"],
  ["pm_card_authenticationRequired", "Visa 3155 (needs authentication)"],
];

const AMOUNT = "A USD amount such as 25 or 12.50";

/**
 * The saved card, auto top-up and the low-balance alert of Settings › Billing: save (Stripe's
 * card page in production, a test card in development), replace or remove the card; turn auto
 * top-up on or off with its threshold, amount and monthly cap (this month's total and the
 * failures shown); set the low-balance threshold.
 */
export default function SpendControls(props: SpendControlsProps) {
  const { mode, csrf } = props;
  const card = useSignal<CardView | null>(props.card);
  const topup = useSignal<TopupView>(props.topup);
  const low = useSignal<string | null>(props.lowBalanceThreshold);
  const saved = useSignal("");
  const { busy, error, run } = useActions();

  const saveCard = (e: Event) => {
    e.preventDefault();
    const f = new FormData(e.currentTarget as HTMLFormElement);
    const test = f.get("payment_method");
    return run(async () => {
      saved.value = "";
      const r = await api(
        csrf,
        "POST",
        "/v1/billing/payment_method",
        test ? { payment_method: test } : {},
      );
      if (r.url) {
        location.assign(r.url);
        return;
      }
      card.value = r as CardView;
      saved.value = "Card saved.";
    });
  };

  const removeCard = () =>
    run(async () => {
      saved.value = "";
      await api(csrf, "DELETE", "/v1/billing/payment_method");
      card.value = null;
      topup.value = { ...topup.value, enabled: false };
      saved.value = "Card removed: auto top-up is off.";
    });

  const saveTopup = (e: Event) => {
    e.preventDefault();
    const f = new FormData(e.currentTarget as HTMLFormElement);
    return run(async () => {
      saved.value = "";
      topup.value = await api(csrf, "PUT", "/v1/billing/auto_topup", {
        enabled: f.get("enabled") === "on",
        threshold: String(f.get("threshold") ?? "").trim(),
        amount: String(f.get("amount") ?? "").trim(),
        monthly_cap: String(f.get("monthly_cap") ?? "").trim(),
      });
      saved.value = topup.value.enabled ? "Auto top-up is on." : "Auto top-up is off.";
    });
  };

  const saveAlert = (e: Event) => {
    e.preventDefault();
    const f = new FormData(e.currentTarget as HTMLFormElement);
    const v = String(f.get("low_balance_threshold") ?? "").trim();
    return run(async () => {
      saved.value = "";
      const r = await api(csrf, "PUT", "/v1/alerts", { low_balance_threshold: v || null });
      low.value = r.low_balance_threshold;
      saved.value = r.low_balance_threshold === null
        ? "The low-balance alert is off."
        : "Low-balance alert saved.";
    });
  };

  const t = topup.value;
  const c = card.value;
  return (
    <div class="spend-controls">
      {saved.value ? <p class="notice ok" role="status">{saved.value}</p> : null}
      {error.value ? <p class="notice error" role="alert">{error.value}</p> : null}
      <section class="card" id="saved-card">
        <h2>Saved card</h2>
        {c
          ? (
            <p id="card-summary">
              <strong>{c.brand.toUpperCase()}</strong> •••• {c.last4}{" "}
              <span class="muted">
                expires {String(c.exp_month).padStart(2, "0")}/{c.exp_year}
              </span>
            </p>
          )
          : <p class="muted" id="card-summary">No card saved: auto top-up needs one.</p>}
        <form class="row-form" onSubmit={saveCard}>
          {mode === "development"
            ? (
              <label>
                Test card
                <select name="payment_method">
                  {TEST_CARDS.map(([id, label]) => <option key={id} value={id}>{label}</option>)}
                </select>
              </label>
            )
            : null}
          <button type="submit" disabled={busy.value}>{c ? "Replace card" : "Save a card"}</button>
          {c
            ? (
              <button
                type="button"
                class="danger-outline"
                disabled={busy.value}
                onClick={removeCard}
              >
                Remove card
              </button>
            )
            : null}
        </form>
        <p class="hint">
          {mode === "production"
            ? "You enter the card on Stripe's page; the router keeps only its brand, last four digits and expiry."
            : "Development mode: a Stripe test card is saved at once, nothing is charged."}
        </p>
      </section>
      <section class="card" id="auto-topup">
        <h2>Auto top-up</h2>
        <form class="row-form" onSubmit={saveTopup}>
          <label class="check">
            <input type="checkbox" name="enabled" checked={t.enabled} /> Top up automatically
          </label>
          <label>
            Top up when the balance falls below (USD)
            <input
              name="threshold"
              inputMode="decimal"
              title={AMOUNT}
              value={t.threshold}
              required
            />
          </label>
          <label>
            Add (USD)
            <input name="amount" inputMode="decimal" title={AMOUNT} value={t.amount} required />
          </label>
          <label>
            At most this a month (USD)
            <input
              name="monthly_cap"
              inputMode="decimal"
              title={AMOUNT}
              value={t.monthly_cap}
              required
            />
          </label>
          <button type="submit" disabled={busy.value}>Save auto top-up</button>
        </form>
        <p id="topup-month">
          This month: <span class="money" data-usd={t.this_month}>{formatMoney(t.this_month)}</span>
          {" "}
          of {formatMoney(t.monthly_cap)}
          {t.failures ? <span class="badge off">{t.failures} failed in a row</span> : null}
          {t.in_flight ? <span class="badge">top-up in progress</span> : null}
        </p>
        {t.last
          ? (
            <p class="hint" id="topup-last">
              Last top-up: {formatMoney(t.last.amount)} {t.last.outcome}
              {t.last.reason ? ` (${t.last.reason.replaceAll("_", " ")})` : ""},{" "}
              {formatTime(t.last.at)}
            </p>
          )
          : null}
        <p class="hint">
          When a request's settlement takes the balance below the threshold, the card is charged the
          amount (less, if the month's cap would be passed); three failures in a row turn auto
          top-up off.
        </p>
      </section>
      <section class="card" id="alerts">
        <h2>Low-balance alert</h2>
        <form class="row-form" onSubmit={saveAlert}>
          <label>
            Alert when the balance falls below (USD)
            <input
              name="low_balance_threshold"
              inputMode="decimal"
              title={`${AMOUNT}; empty for no alert`}
              value={low.value ?? ""}
              placeholder="none"
            />
          </label>
          <button type="submit" disabled={busy.value}>Save alert</button>
        </form>
        <p class="hint">
          Shown as a banner on every page while the balance is below it, and sent to your webhook
          endpoints as <code>balance.low</code>.
        </p>
      </section>
    </div>
  );
}
