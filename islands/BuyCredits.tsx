import { useSignal } from "@preact/signals";
import { formatMoney } from "../lib/render/format.ts";

export interface BuyCreditsProps extends Record<string, unknown> {
  packages: { id: string; name: string; price: string; currency: string; credits: string }[];
  mode: "development" | "production";
  csrf: string;
}

/**
 * The credit packages; a click buys through POST /v1/billing/checkout: a Stripe Checkout redirect
 * in production, an instant grant in development.
 */
export default function BuyCredits({ packages, mode, csrf }: BuyCreditsProps) {
  const busy = useSignal<string | null>(null);
  const error = useSignal("");

  const buy = async (id: string) => {
    busy.value = id;
    error.value = "";
    try {
      const res = await fetch("/v1/billing/checkout", {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json", "x-csrf-token": csrf },
        body: JSON.stringify({ package_id: id }),
      });
      const json = await res.json().catch(() => null);
      if (!res.ok) throw new Error(json?.error?.message ?? `The purchase failed (${res.status})`);
      if (json?.url) {
        location.assign(json.url);
        return;
      }
      location.assign(`/dashboard/settings/billing?purchased=${encodeURIComponent(id)}`);
    } catch (e) {
      error.value = e instanceof Error ? e.message : String(e);
      busy.value = null;
    }
  };

  return (
    <div>
      <ul class="packages">
        {packages.map((p) => {
          const bonus = Number(p.credits) > Number(p.price);
          return (
            <li class="package card" data-package={p.id}>
              <h3>{p.name}</h3>
              <p class="package-credits">{formatMoney(p.credits)} credit</p>
              <p class="muted">
                for {formatMoney(p.price)} {p.currency.toUpperCase()}
                {bonus ? <span class="badge on">bonus</span> : null}
              </p>
              <button
                type="button"
                disabled={busy.value !== null}
                aria-busy={busy.value === p.id}
                onClick={() => buy(p.id)}
              >
                {busy.value === p.id ? "Working…" : `Buy ${p.name}`}
              </button>
            </li>
          );
        })}
      </ul>
      <p class="muted">
        {mode === "production"
          ? "You will be taken to Stripe Checkout to pay securely."
          : "Development mode: credit is granted at once, no payment is taken."}
      </p>
      {error.value ? <p class="notice error" role="alert">{error.value}</p> : null}
    </div>
  );
}
