/** The ledger as a table: the customer's transaction history and the operator's view of it. */
import type { LedgerJson } from "../http/presenters.ts";
import type { LedgerType } from "../billing/types.ts";
import { Empty, Money } from "./layout.tsx";
import { formatTime } from "./format.ts";
import type { ComponentChildren } from "preact";

/** What each ledger type means, shown as the type badge's tooltip. */
const TYPE_HELP: Record<LedgerType, string> = {
  purchase: "Credits added via payment",
  usage_debit: "Credits deducted for API usage",
  adjustment: "Manual credit adjustment by admin",
  refund: "Credits returned",
};

/** Ledger entries as GET /v1/transactions shows them, newest first; `empty` when there are none. */
export function LedgerTable(
  { id, rows, empty }: {
    id: string;
    rows: LedgerJson[];
    empty: ComponentChildren;
  },
) {
  if (rows.length === 0) return <Empty>{empty}</Empty>;
  return (
    <div class="table-wrap">
      <table class="data" id={id}>
        <thead>
          <tr>
            <th scope="col">Date</th>
            <th scope="col">Type</th>
            <th scope="col">Description</th>
            <th scope="col" class="r">Amount</th>
            <th scope="col" class="r">Balance after</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((t) => (
            <tr data-type={t.type} data-id={t.id}>
              <td>{formatTime(t.created_at)}</td>
              <td>
                <span class={`badge tx-${t.type}`} title={TYPE_HELP[t.type as LedgerType]}>
                  {t.type}
                </span>
              </td>
              <td>
                {t.description}
                {t.receipt_url
                  ? (
                    <>
                      {" "}
                      <a
                        class="receipt"
                        href={t.receipt_url}
                        target="_blank"
                        rel="noopener noreferrer"
                      >
                        Receipt
                      </a>
                    </>
                  )
                  : null}
              </td>
              <td class={`r amount ${t.amount.startsWith("-") ? "neg" : "pos"}`}>
                <Money usd={t.amount} />
              </td>
              <td class="r">
                <Money usd={t.balance_after} />
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
