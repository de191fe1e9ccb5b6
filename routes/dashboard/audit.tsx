import {
  type PageConfig,
  type PageCtx,
  pageOfUrl,
  type PageProps,
} from "../../lib/render/page.tsx";
import { type AuditFilter, listAuditByAccount } from "../../lib/audit/query.ts";
import { auditJson } from "../../lib/audit/row.ts";
import { KeyFilter, keyNames } from "../../lib/render/usage_view.tsx";
import { Count, Empty, Money, Notice, OlderLink } from "../../lib/render/layout.tsx";
import { formatCount } from "../../lib/render/format.ts";
import { isoTimeMs } from "../../lib/http/params.ts";

export const config: PageConfig = {
  title: "Audit",
  auth: "user",
  layout: "dashboard",
  nav: "audit",
};

const FIELDS = ["from", "to", "key_id", "provider", "model", "status"] as const;
const PAGE = 50;

interface Data {
  rows: ReturnType<typeof auditJson>[];
  nextCursor: string | null;
  values: Record<(typeof FIELDS)[number], string>;
  names: Record<string, string>;
  exportQuery: string;
  error: string | null;
}

// A real calendar day, as GET /v1/audit reads it (Date.parse takes "2026-02-30" for March 2).
const isDay = (v: string) => /^\d{4}-\d{2}-\d{2}$/.test(v) && Number.isFinite(isoTimeMs(v));

export const handler = {
  async GET(ctx: PageCtx): Promise<{ data: Data; status?: number }> {
    const q = ctx.url.searchParams;
    const values = Object.fromEntries(
      FIELDS.map((f) => [f, (q.get(f) ?? "").trim()]),
    ) as Data["values"];
    let error: string | null = null;
    for (const f of ["from", "to"] as const) {
      if (values[f] && !isDay(values[f])) {
        error = `'${f}' must be a date`;
        values[f] = "";
      }
    }
    if (values.from && values.to && values.from > values.to) {
      error = "'from' must not be after 'to'";
      values.from = values.to = "";
    }
    if (values.status && !/^\d{3}$/.test(values.status)) {
      error = "'status' must be an HTTP status code such as 200 or 402";
      values.status = "";
    }
    // The same filter as GET /v1/audit: the period is [from, to), a date as 'to' includes that day.
    const filter: AuditFilter = {
      fromMs: values.from ? isoTimeMs(values.from) : 0,
      toMs: values.to ? isoTimeMs(values.to) + 86_400_000 : Number.MAX_SAFE_INTEGER,
      key_id: values.key_id || undefined,
      provider: values.provider || undefined,
      model: values.model || undefined,
      status: values.status ? Number(values.status) : undefined,
    };
    const accountId = ctx.viewer!.account!.id;
    const [page, names] = await Promise.all([
      pageOfUrl(
        ctx.url,
        (cursor) => listAuditByAccount(ctx.svc.kv, accountId, filter, PAGE, cursor),
      ),
      keyNames(ctx.svc.kv, accountId, ctx.svc.now()),
    ]);
    const exportQuery = new URLSearchParams(
      FIELDS.flatMap((f) => values[f] ? [[f, values[f]]] : []),
    ).toString();
    return {
      data: { rows: page.data, nextCursor: page.next_cursor, values, names, exportQuery, error },
      status: error ? 400 : 200,
    };
  },
};

/** The audit trail: every request's metadata, filterable, paged, exportable. */
export default function Audit({ data, url }: PageProps<Data>) {
  const v = data.values;
  const ex = data.exportQuery ? `&${data.exportQuery}` : "";
  return (
    <>
      <form method="get" class="filters" aria-label="Filter the audit trail">
        <label>
          From<input type="date" name="from" value={v.from} />
        </label>
        <label>
          To<input type="date" name="to" value={v.to} />
        </label>
        <KeyFilter names={data.names} selected={v.key_id} />
        <label>
          Provider<input name="provider" value={v.provider} placeholder="openai" />
        </label>
        <label>
          Model<input name="model" value={v.model} placeholder="gpt-4o-mini" />
        </label>
        <label>
          Status<input
            name="status"
            value={v.status}
            inputMode="numeric"
            placeholder="200"
            size={4}
          />
        </label>
        <button type="submit" class="secondary">Filter</button>
      </form>
      {data.error ? <Notice kind="error">{data.error}</Notice> : null}
      <p class="export">
        Export these rows:{" "}
        <a id="export-csv" href={`/v1/audit/export?format=csv${ex}`} download>CSV</a>
        {" · "}
        <a id="export-json" href={`/v1/audit/export?format=json${ex}`} download>JSON</a>
      </p>
      {data.rows.length === 0
        ? <Empty>No requests match. Every API request made with your keys is listed here.</Empty>
        : (
          <div class="table-wrap">
            <table class="data audit" id="audit-table">
              <caption class="sr-only">Audit trail, newest first</caption>
              <thead>
                <tr>
                  <th scope="col">Time (UTC)</th>
                  <th scope="col">Key</th>
                  <th scope="col">Model</th>
                  <th scope="col" class="r">Tokens in / cached / out</th>
                  <th scope="col" class="r">Cost</th>
                  <th scope="col" class="r">Market</th>
                  <th scope="col" class="r">Latency</th>
                  <th scope="col">Status</th>
                  <th scope="col">Client</th>
                </tr>
              </thead>
              <tbody>
                {data.rows.map((r) => (
                  <tr data-request-id={r.request_id}>
                    <td class="nowrap">
                      {r.timestamp.slice(0, 19).replace("T", " ")}
                      <span class="sub">{r.request_id}</span>
                    </td>
                    <td>{r.key_name}</td>
                    <td class="nowrap">
                      {r.model}
                      <span class="sub">{r.provider}{r.streaming ? " · stream" : ""}</span>
                    </td>
                    <td class="r">
                      <Count n={r.prompt_tokens} /> / <Count n={r.cached_tokens} /> /{" "}
                      <Count n={r.completion_tokens} />
                    </td>
                    <td class="r">
                      <Money usd={r.cost} />
                    </td>
                    <td class="r">
                      <Money usd={r.market_cost} />
                    </td>
                    <td class="r">{formatCount(r.latency_ms)} ms</td>
                    <td>
                      <span class={`badge ${r.status < 400 ? "on" : "off"}`}>{r.status}</span>
                      {r.error_code ? <span class="sub">{r.error_code}</span> : null}
                    </td>
                    <td>
                      {r.client_ip || "—"}
                      <span class="sub ua" title={r.user_agent}>{r.user_agent}</span>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      <OlderLink url={url} cursor={data.nextCursor} label="Older rows" />
    </>
  );
}
