import { Fragment } from "preact";
import { useSignal } from "@preact/signals";
import { formatMoney, formatTime } from "../lib/render/format.ts";
import { api } from "../lib/render/api.ts";
import { SecretOnce, useActions } from "../lib/render/actions.tsx";

/** A key as GET /v1/keys shows it. */
export interface KeyView {
  id: string;
  name: string;
  scope: string;
  prefix: string;
  created_at: string;
  last_used_at: string | null;
  disabled: boolean;
  credit_limit: string | null;
  limit_reset: string | null;
  /** Fractions of the credit limit at which its alert fires (0.8 is 80 %). */
  alert_thresholds: number[];
  spend: string;
}

export interface KeysManagerProps extends Record<string, unknown> {
  keys: KeyView[];
  csrf: string;
}

/**
 * A limit form's fields as the API takes them: no limit is null, a reset only with a limit; the
 * alert percents ("80, 100") as fractions, left out when empty (the key keeps its own).
 */
function readLimit(f: FormData) {
  const limit = String(f.get("credit_limit") ?? "").trim();
  const reset = String(f.get("limit_reset") ?? "");
  const alerts = String(f.get("alert_percents") ?? "").split(/[\s,%]+/).filter(Boolean);
  return {
    credit_limit: limit || null,
    limit_reset: limit && reset ? reset : null,
    ...(alerts.length ? { alert_thresholds: alerts.map((p) => Number(p) / 100) } : {}),
  };
}

/** A key's alert thresholds as percents: "80, 100". */
const percents = (fs: number[]) => fs.map((f) => Number((f * 100).toFixed(2))).join(", ");

const RESETS = { daily: "Daily", weekly: "Weekly", monthly: "Monthly" };

/** What the credit limit field takes, as the API does (`usdAmount`): shown, and in `title`. */
const LIMIT_FORMAT = "A USD amount such as 25 or 12.50, with up to 9 decimals";

/**
 * The credit limit and its reset period: blank (create) or a key's current values (edit). The
 * limit input is described by `hint`, the id of the form's LimitHint.
 */
function LimitFields(
  { hint, limit, reset, alerts }: {
    hint: string;
    limit?: string;
    reset?: string | null;
    alerts?: number[];
  },
) {
  return (
    <>
      <label>
        Credit limit (USD)
        <input
          name="credit_limit"
          inputMode="decimal"
          pattern="\d+(\.\d{1,9})?"
          title={LIMIT_FORMAT}
          aria-describedby={hint}
          value={limit}
          placeholder="none"
        />
      </label>
      <label>
        Resets
        <select name="limit_reset">
          <option value="">Never</option>
          {Object.entries(RESETS).map(([r, label]) => (
            <option value={r} selected={reset === r}>{label}</option>
          ))}
        </select>
      </label>
      <label>
        Alert at (% of limit)
        <input
          name="alert_percents"
          inputMode="decimal"
          pattern="[\d.,%\s]*"
          title="Percents of the credit limit, such as 80, 100"
          value={alerts ? percents(alerts) : undefined}
          placeholder="80, 100"
        />
      </label>
    </>
  );
}

/** The credit limit's expected form, on its own line under a limit form. */
function LimitHint({ id }: { id: string }) {
  return <p id={id} class="hint form-hint">{LIMIT_FORMAT}; empty for no limit.</p>;
}

/** The keys table with create (secret shown once, with copy), limit edits, disable and revoke. */
export default function KeysManager({ keys: initial, csrf }: KeysManagerProps) {
  const keys = useSignal<KeyView[]>(initial);
  const secret = useSignal<{ name: string; key: string } | null>(null);
  const { busy, error, row, run } = useActions();
  const editing = useSignal<string | null>(null);
  const confirming = useSignal<string | null>(null);

  const create = (e: Event) => {
    e.preventDefault();
    const form = e.currentTarget as HTMLFormElement;
    const f = new FormData(form);
    const body = {
      name: String(f.get("name") ?? ""),
      scope: String(f.get("scope") ?? "inference"),
      ...readLimit(f),
    };
    return run(async () => {
      const k = await api(csrf, "POST", "/v1/keys", body);
      const { key, ...view } = k;
      keys.value = [...keys.value, view as KeyView];
      secret.value = { name: k.name, key };
      form.reset();
    });
  };

  const replace = (k: KeyView) => keys.value = keys.value.map((x) => x.id === k.id ? k : x);

  const saveLimit = (e: Event, id: string) => {
    e.preventDefault();
    const f = new FormData(e.currentTarget as HTMLFormElement);
    return run(async () => {
      replace(await api(csrf, "PATCH", `/v1/keys/${id}`, readLimit(f)));
      editing.value = null;
    }, id);
  };

  const toggle = (k: KeyView) =>
    run(
      async () => replace(await api(csrf, "PATCH", `/v1/keys/${k.id}`, { disabled: !k.disabled })),
      k.id,
    );

  const revoke = (k: KeyView) =>
    run(async () => {
      await api(csrf, "DELETE", `/v1/keys/${k.id}`);
      keys.value = keys.value.filter((x) => x.id !== k.id);
      confirming.value = null;
    }, k.id);

  return (
    <div class="keys">
      <section class="card">
        <h2>Create a key</h2>
        <form class="row-form" onSubmit={create}>
          <label>
            Name<input name="name" required maxLength={100} placeholder="backend" />
          </label>
          <label>
            Scope
            <select name="scope">
              <option value="inference">Inference</option>
              <option value="management">Management</option>
            </select>
          </label>
          <LimitFields hint="limit-hint-new" />
          <button type="submit" disabled={busy.value}>Create key</button>
          <LimitHint id="limit-hint-new" />
        </form>
        {secret.value
          ? (
            <SecretOnce
              key={secret.value.key}
              secret={secret.value.key}
              id="new-key-secret"
              copyId="copy-key"
            >
              <strong>{secret.value.name}</strong>: copy this key now. It is shown only once.
            </SecretOnce>
          )
          : null}
        {error.value ? <p class="notice error" role="alert">{error.value}</p> : null}
      </section>
      <section class="card">
        <h2>Your keys</h2>
        {keys.value.length === 0
          ? <div class="empty">No keys yet: create one above to call the API.</div>
          : (
            <div class="table-wrap">
              <table class="data" id="keys-table">
                <thead>
                  <tr>
                    <th scope="col">Name</th>
                    <th scope="col">Scope</th>
                    <th scope="col" class="r">Spend</th>
                    <th scope="col" class="r">Limit</th>
                    <th scope="col">Last used</th>
                    <th scope="col">Status</th>
                    <th scope="col">
                      <span class="sr-only">Actions</span>
                    </th>
                  </tr>
                </thead>
                <tbody>
                  {keys.value.map((k) => (
                    <Fragment key={k.id}>
                      <tr data-key-id={k.id}>
                        <th scope="row">
                          {k.name}
                          <span class="sub">
                            <code>{k.prefix}…</code>
                          </span>
                        </th>
                        <td>{k.scope}</td>
                        <td class="r key-spend" data-usd={k.spend}>{formatMoney(k.spend)}</td>
                        <td class="r">
                          {k.credit_limit === null ? "None" : formatMoney(k.credit_limit)}
                          {k.limit_reset ? <span class="sub">{k.limit_reset}</span> : null}
                          {k.credit_limit === null ? null : (
                            <span class="sub key-alerts">
                              alerts at {percents(k.alert_thresholds)} %
                            </span>
                          )}
                        </td>
                        <td>{formatTime(k.last_used_at)}</td>
                        <td>
                          <span class={`badge ${k.disabled ? "off" : "on"}`}>
                            {k.disabled ? "Disabled" : "Active"}
                          </span>
                        </td>
                        <td>
                          <div class="btns">
                            <a
                              class="button small secondary"
                              href={`/dashboard/usage?key_id=${encodeURIComponent(k.id)}`}
                              aria-label={`Usage of ${k.name}`}
                            >
                              Usage
                            </a>
                            <button
                              type="button"
                              class="small secondary"
                              aria-label={`Edit limit of ${k.name}`}
                              aria-expanded={editing.value === k.id}
                              onClick={() => editing.value = editing.value === k.id ? null : k.id}
                            >
                              Edit limit
                            </button>
                            <button
                              type="button"
                              class="small secondary"
                              disabled={busy.value}
                              aria-label={`${k.disabled ? "Enable" : "Disable"} ${k.name}`}
                              onClick={() => toggle(k)}
                            >
                              {k.disabled ? "Enable" : "Disable"}
                            </button>
                            {confirming.value === k.id
                              ? (
                                <button
                                  type="button"
                                  class="small danger"
                                  disabled={busy.value}
                                  aria-label={`Confirm revoke of ${k.name}`}
                                  onClick={() => revoke(k)}
                                >
                                  Confirm revoke
                                </button>
                              )
                              : (
                                <button
                                  type="button"
                                  class="small danger-outline"
                                  aria-label={`Revoke ${k.name}`}
                                  onClick={() => confirming.value = k.id}
                                >
                                  Revoke
                                </button>
                              )}
                          </div>
                        </td>
                      </tr>
                      {editing.value === k.id
                        ? (
                          <tr class="edit-row">
                            <td colSpan={7}>
                              <form class="row-form" onSubmit={(e) => saveLimit(e, k.id)}>
                                <LimitFields
                                  hint={`limit-hint-${k.id}`}
                                  limit={k.credit_limit ?? ""}
                                  reset={k.limit_reset}
                                  alerts={k.alert_thresholds}
                                />
                                <button type="submit" disabled={busy.value}>Save limit</button>
                                <LimitHint id={`limit-hint-${k.id}`} />
                              </form>
                            </td>
                          </tr>
                        )
                        : null}
                      {row.value?.id === k.id
                        ? (
                          <tr class="row-error" data-error-for={k.id}>
                            <td colSpan={7}>
                              <p class="notice error" role="alert">
                                {k.name}: {row.value.text}
                              </p>
                            </td>
                          </tr>
                        )
                        : null}
                    </Fragment>
                  ))}
                </tbody>
              </table>
            </div>
          )}
      </section>
    </div>
  );
}
