import type { PageConfig, PageCtx, PageProps } from "../../../lib/render/page.tsx";
import { listAccounts, verifyBooks } from "../../../lib/billing/accounts.ts";
import {
  type AccountJson,
  accountJson,
  type VerifyJson,
  verifyJson,
} from "../../../lib/http/presenters.ts";
import { Empty, Money, Notice } from "../../../lib/render/layout.tsx";
import { formatCount, formatTime } from "../../../lib/render/format.ts";

export const config: PageConfig = {
  title: "Accounts",
  auth: "admin",
  layout: "admin",
  nav: "accounts",
};

interface Data {
  accounts: AccountJson[];
  books: VerifyJson | null;
}

export const handler = {
  async GET(ctx: PageCtx): Promise<{ data: Data }> {
    const kv = ctx.svc.kv;
    // The same list and books check as GET /v1/admin/accounts and GET /v1/admin/verify.
    const [accounts, books] = await Promise.all([
      listAccounts(kv),
      ctx.url.searchParams.get("verify") === "1" ? verifyBooks(kv) : null,
    ]);
    return {
      data: {
        accounts: accounts.map(({ account, balance }) => accountJson(account, balance)),
        books: books && verifyJson(books),
      },
    };
  },
};

/** Every account with its balance, and the books check. */
export default function AdminAccounts({ data }: PageProps<Data>) {
  const b = data.books;
  return (
    <>
      <section class="card">
        <h2>The books</h2>
        {b
          ? (
            <Notice kind={b.ok ? "ok" : "error"}>
              <span id="books-result">
                {b.ok ? "The books balance." : "The books do not balance."}
              </span>{" "}
              {formatCount(b.accounts_checked)} accounts checked, {formatCount(b.pending_events)}
              {" "}
              usage events still being recorded.
            </Notice>
          )
          : (
            <p class="muted">
              Checks Σ ledger = balance and reserved = Σ open holds for every account.
            </p>
          )}
        {b && b.differences.length
          ? (
            <div class="table-wrap">
              <table class="data">
                <thead>
                  <tr>
                    <th scope="col">Account</th>
                    <th scope="col" class="r">Balance</th>
                    <th scope="col" class="r">Ledger sum</th>
                    <th scope="col" class="r">Reserved</th>
                    <th scope="col" class="r">Holds sum</th>
                  </tr>
                </thead>
                <tbody>
                  {b.differences.map((d) => (
                    <tr>
                      <th scope="row">{d.account_id}</th>
                      <td class="r">
                        <Money usd={d.balance} />
                      </td>
                      <td class="r">
                        <Money usd={d.ledger_sum} />
                      </td>
                      <td class="r">
                        <Money usd={d.reserved} />
                      </td>
                      <td class="r">
                        <Money usd={d.holds_sum} />
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )
          : null}
        <form method="get">
          <input type="hidden" name="verify" value="1" />
          <button type="submit" class="secondary">Check the books</button>
        </form>
      </section>
      <section class="card">
        <h2>Accounts</h2>
        {data.accounts.length === 0 ? <Empty>No accounts yet.</Empty> : (
          <div class="table-wrap">
            <table class="data" id="accounts">
              <thead>
                <tr>
                  <th scope="col">Account</th>
                  <th scope="col">Created</th>
                  <th scope="col" class="r">Balance</th>
                  <th scope="col" class="r">Reserved</th>
                  <th scope="col" class="r">Purchased</th>
                  <th scope="col" class="r">Used</th>
                </tr>
              </thead>
              <tbody>
                {data.accounts.map((a) => (
                  <tr data-account-id={a.id}>
                    <th scope="row">
                      <a href={`/dashboard/admin/accounts/${a.id}`}>{a.name}</a>
                      <span class="sub">{a.email ?? a.id}</span>
                    </th>
                    <td>{formatTime(a.created_at)}</td>
                    <td class="r">
                      <Money usd={a.balance} />
                    </td>
                    <td class="r">
                      <Money usd={a.reserved} />
                    </td>
                    <td class="r">
                      <Money usd={a.total_purchased} />
                    </td>
                    <td class="r">
                      <Money usd={a.total_used} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
    </>
  );
}
