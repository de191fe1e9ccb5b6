import { Fragment } from "preact";
import { useSignal } from "@preact/signals";
import { formatTime } from "../lib/render/format.ts";
import { api } from "../lib/render/api.ts";
import { SecretOnce, useActions } from "../lib/render/actions.tsx";

/** An endpoint as GET /v1/webhooks shows it. */
export interface EndpointView {
  id: string;
  url: string;
  events: string[];
  disabled: boolean;
  created_at: string;
  updated_at: string;
}

/** A delivery as GET /v1/webhooks/{id}/deliveries shows it. */
export interface DeliveryView {
  webhook_id: string;
  type: string;
  state: "pending" | "delivered" | "failed";
  attempts: number;
  last_status: number | null;
  last_error: string | null;
  latency_ms: number | null;
  created_at: string;
  delivered_at: string | null;
  next_attempt_at: string | null;
}

export interface WebhooksManagerProps extends Record<string, unknown> {
  endpoints: EndpointView[];
  /** The event types offered, with what each means. */
  events: { type: string; label: string }[];
  csrf: string;
  max: number;
}

/** The last attempt's outcome, for people: the HTTP status, or why there was none. */
function outcome(d: DeliveryView): string {
  if (d.last_status !== null) return `HTTP ${d.last_status}`;
  return d.last_error?.replaceAll("_", " ") ?? "not yet attempted";
}

/** The delivery log of one endpoint, newest first. */
function DeliveryLog({ id, rows }: { id: string; rows: DeliveryView[] }) {
  if (rows.length === 0) return <div class="empty">No deliveries yet.</div>;
  return (
    <div class="table-wrap">
      <table class="data" id={`deliveries-${id}`}>
        <thead>
          <tr>
            <th scope="col">Event</th>
            <th scope="col">Created</th>
            <th scope="col">State</th>
            <th scope="col" class="r">Attempts</th>
            <th scope="col">Last attempt</th>
            <th scope="col" class="r">Latency</th>
            <th scope="col">Next attempt</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((d) => (
            <tr data-webhook-id={d.webhook_id} data-state={d.state}>
              <td>
                <code>{d.type}</code>
                <span class="sub">
                  <code>{d.webhook_id}</code>
                </span>
              </td>
              <td>{formatTime(d.created_at)}</td>
              <td>
                <span class={`badge ${d.state === "failed" ? "off" : "on"}`}>{d.state}</span>
              </td>
              <td class="r">{d.attempts}</td>
              <td class="last-outcome">{outcome(d)}</td>
              <td class="r">{d.latency_ms === null ? "—" : `${d.latency_ms} ms`}</td>
              <td>{formatTime(d.next_attempt_at)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

/**
 * The account's webhook endpoints: add one (its signing secret shown once), send a test event,
 * read the delivery log, disable, delete.
 */
export default function WebhooksManager(
  { endpoints: initial, events, csrf, max }: WebhooksManagerProps,
) {
  const endpoints = useSignal<EndpointView[]>(initial);
  const secret = useSignal<{ url: string; secret: string } | null>(null);
  const { busy, error, row, run } = useActions();
  /** The open delivery logs, by endpoint. */
  const logs = useSignal<Record<string, DeliveryView[]>>({});
  const confirming = useSignal<string | null>(null);

  const loadLog = async (id: string) => {
    const page = await api(csrf, "GET", `/v1/webhooks/${id}/deliveries?limit=20`);
    logs.value = { ...logs.value, [id]: page.data };
  };

  const create = (e: Event) => {
    e.preventDefault();
    const form = e.currentTarget as HTMLFormElement;
    const f = new FormData(form);
    const body = { url: String(f.get("url") ?? "").trim(), events: f.getAll("events") };
    return run(async () => {
      const created = await api(csrf, "POST", "/v1/webhooks", body);
      const { secret: s, ...view } = created;
      endpoints.value = [...endpoints.value, view as EndpointView];
      secret.value = { url: created.url, secret: s };
      form.reset();
    });
  };

  const test = (ep: EndpointView) =>
    run(async () => {
      const d: DeliveryView = await api(csrf, "POST", `/v1/webhooks/${ep.id}/test`);
      await loadLog(ep.id);
      row.value = d.state === "delivered"
        ? { id: ep.id, kind: "ok", text: `Test event delivered: ${outcome(d)}.` }
        : {
          id: ep.id,
          kind: "error",
          text: `Test event not delivered (${outcome(d)}); next attempt ${
            formatTime(d.next_attempt_at)
          }.`,
        };
    }, ep.id);

  const toggleLog = (ep: EndpointView) => {
    if (logs.value[ep.id]) {
      const { [ep.id]: _, ...rest } = logs.value;
      logs.value = rest;
      return;
    }
    return run(() => loadLog(ep.id), ep.id);
  };

  const toggleDisabled = (ep: EndpointView) =>
    run(async () => {
      const next = await api(csrf, "PATCH", `/v1/webhooks/${ep.id}`, { disabled: !ep.disabled });
      endpoints.value = endpoints.value.map((x) => x.id === ep.id ? next : x);
    }, ep.id);

  const remove = (ep: EndpointView) =>
    run(async () => {
      await api(csrf, "DELETE", `/v1/webhooks/${ep.id}`);
      endpoints.value = endpoints.value.filter((x) => x.id !== ep.id);
      confirming.value = null;
    }, ep.id);

  return (
    <div class="webhooks">
      <section class="card">
        <h2>Add an endpoint</h2>
        <form class="row-form" onSubmit={create}>
          <label class="grow">
            Endpoint URL
            <input
              name="url"
              type="url"
              required
              maxLength={2048}
              placeholder="https://example.com/webhooks/router"
            />
          </label>
          <fieldset class="checks">
            <legend>Events</legend>
            {events.map((ev) => (
              <label class="check">
                <input type="checkbox" name="events" value={ev.type} checked />
                <code>{ev.type}</code> <span class="muted">{ev.label}</span>
              </label>
            ))}
          </fieldset>
          <button type="submit" disabled={busy.value || endpoints.value.length >= max}>
            Add endpoint
          </button>
        </form>
        {secret.value
          ? (
            <SecretOnce
              key={secret.value.secret}
              secret={secret.value.secret}
              id="new-webhook-secret"
              copyId="copy-webhook-secret"
            >
              Signing secret of{" "}
              <strong>{secret.value.url}</strong>: copy it now. It is shown only once.
            </SecretOnce>
          )
          : null}
        {error.value ? <p class="notice error" role="alert">{error.value}</p> : null}
      </section>
      <section class="card">
        <h2>Endpoints</h2>
        {endpoints.value.length === 0
          ? <div class="empty">No endpoints yet: add one above to receive events.</div>
          : (
            <div class="table-wrap">
              <table class="data" id="webhooks-table">
                <thead>
                  <tr>
                    <th scope="col">URL</th>
                    <th scope="col">Events</th>
                    <th scope="col">Status</th>
                    <th scope="col">
                      <span class="sr-only">Actions</span>
                    </th>
                  </tr>
                </thead>
                <tbody>
                  {endpoints.value.map((ep) => (
                    <Fragment key={ep.id}>
                      <tr data-endpoint-id={ep.id}>
                        <th scope="row" class="endpoint-url">
                          {ep.url}
                          <span class="sub">
                            <code>{ep.id}</code>
                          </span>
                        </th>
                        <td>
                          {ep.events.map((t) => <code key={t} class="event-type">{t}</code>)}
                        </td>
                        <td>
                          <span class={`badge ${ep.disabled ? "off" : "on"}`}>
                            {ep.disabled ? "Disabled" : "Active"}
                          </span>
                        </td>
                        <td>
                          <div class="btns">
                            <button
                              type="button"
                              class="small"
                              disabled={busy.value || ep.disabled}
                              onClick={() => test(ep)}
                            >
                              Send test event
                            </button>
                            <button
                              type="button"
                              class="small secondary"
                              aria-expanded={Boolean(logs.value[ep.id])}
                              onClick={() => toggleLog(ep)}
                            >
                              Deliveries
                            </button>
                            <button
                              type="button"
                              class="small secondary"
                              disabled={busy.value}
                              onClick={() => toggleDisabled(ep)}
                            >
                              {ep.disabled ? "Enable" : "Disable"}
                            </button>
                            {confirming.value === ep.id
                              ? (
                                <button
                                  type="button"
                                  class="small danger"
                                  disabled={busy.value}
                                  onClick={() => remove(ep)}
                                >
                                  Confirm delete
                                </button>
                              )
                              : (
                                <button
                                  type="button"
                                  class="small danger-outline"
                                  onClick={() => confirming.value = ep.id}
                                >
                                  Delete
                                </button>
                              )}
                          </div>
                        </td>
                      </tr>
                      {row.value?.id === ep.id
                        ? (
                          <tr class="row-note">
                            <td colSpan={4}>
                              <p
                                class={`notice ${row.value.kind}`}
                                role={row.value.kind === "error" ? "alert" : "status"}
                              >
                                {row.value.text}
                              </p>
                            </td>
                          </tr>
                        )
                        : null}
                      {logs.value[ep.id]
                        ? (
                          <tr class="log-row">
                            <td colSpan={4}>
                              <DeliveryLog id={ep.id} rows={logs.value[ep.id]} />
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
