import type { PageConfig, PageCtx, PageProps } from "../../../lib/render/page.tsx";
import { Island } from "../../../lib/render/island.tsx";
import { getEndpoints, MAX_ENDPOINTS } from "../../../lib/webhooks/endpoints.ts";
import { endpointJson } from "../../../lib/http/presenters.ts";
import WebhooksManager, { type WebhooksManagerProps } from "../../../islands/WebhooksManager.tsx";

export const config: PageConfig = {
  title: "Settings › Webhooks",
  auth: "user",
  layout: "dashboard",
  nav: "webhooks",
};

/** The events the router sends today, with what each means. */
const EVENTS = [
  { type: "credits.purchased", label: "credit bought (or granted in development)" },
  {
    type: "credits.refunded",
    label: "a refund: credit returned, or taken back by a Stripe refund",
  },
];

export const handler = {
  async GET(ctx: PageCtx): Promise<{ data: WebhooksManagerProps }> {
    const list = (await getEndpoints(ctx.svc.kv, ctx.viewer!.account!.id)).value ?? [];
    return {
      data: {
        // The same view of each endpoint as GET /v1/webhooks.
        endpoints: list.map(endpointJson),
        events: EVENTS,
        csrf: ctx.viewer!.session.csrf,
        max: MAX_ENDPOINTS,
      },
    };
  },
};

/** The account's webhook endpoints, their test events and delivery logs. */
export default function Webhooks({ data }: PageProps<WebhooksManagerProps>) {
  return (
    <>
      <p class="muted">
        Each event is POSTed as JSON{" "}
        <code>{"{type, timestamp, data}"}</code>, signed the Standard Webhooks way (<code>
          webhook-id
        </code>, <code>webhook-timestamp</code>, <code>webhook-signature</code>): verify it with the
        {" "}
        <code>standardwebhooks</code>{" "}
        library and the endpoint's secret. A delivery that is not answered 2xx within 10 seconds is
        retried for up to a day, under the same <code>webhook-id</code>.
      </p>
      <Island component={WebhooksManager} props={data} />
    </>
  );
}
