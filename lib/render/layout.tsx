import type { ComponentChildren } from "preact";
import type { Viewer } from "./page.tsx";
import type { ActiveAlert } from "../billing/alerts.ts";
import { formatCount, formatMoney, formatPercent } from "./format.ts";

const NAV = [
  { id: "overview", href: "/dashboard", label: "Overview" },
  { id: "usage", href: "/dashboard/usage", label: "Usage" },
  { id: "keys", href: "/dashboard/keys", label: "Keys" },
  { id: "audit", href: "/dashboard/audit", label: "Audit" },
  { id: "billing", href: "/dashboard/settings/billing", label: "Billing" },
  { id: "members", href: "/dashboard/settings/members", label: "Members" },
  { id: "webhooks", href: "/dashboard/settings/webhooks", label: "Webhooks" },
];

function Brand({ href }: { href: string }) {
  return (
    <a class="brand" href={href}>
      <span class="brand-mark" aria-hidden="true">◆</span> Enterprise Router
    </a>
  );
}

/** Pages for visitors: the landing page, sign-in and sign-up. */
export function PublicShell({ children }: { children: ComponentChildren }) {
  return (
    <>
      <a class="skip" href="#main">Skip to content</a>
      <header class="topbar">
        <Brand href="/" />
        <nav aria-label="Account" class="topnav">
          <a href="/signin">Sign in</a>
          <a class="button small" href="/signup">Sign up</a>
        </nav>
      </header>
      <main id="main" class="public">{children}</main>
    </>
  );
}

/** The sign-out button every signed-in page carries. */
function SignOut({ viewer }: { viewer: Viewer }) {
  return (
    <form method="post" action="/signout">
      <input type="hidden" name="_csrf" value={viewer.session.csrf} />
      <button type="submit" class="small secondary">Sign out</button>
    </form>
  );
}

/** The frame of a signed-in page: skip link, top bar, side navigation and the titled content. */
function SignedInFrame(
  { topbarClass, home, who, nav, title, children }: {
    topbarClass: string;
    home: string;
    who: ComponentChildren;
    nav: ComponentChildren;
    title: string;
    children: ComponentChildren;
  },
) {
  return (
    <>
      <a class="skip" href="#main">Skip to content</a>
      <header class={topbarClass}>
        <Brand href={home} />
        <div class="who">{who}</div>
      </header>
      {nav}
      <main id="main" class="content">
        <h1>{title}</h1>
        {children}
      </main>
    </>
  );
}

/** What a signed-in layout wraps: the viewer, the active nav entry, the title and the page. */
interface ShellProps {
  viewer: Viewer;
  active: string;
  title: string;
  children: ComponentChildren;
}

const REASONS: Record<string, string> = {
  card_declined: "the card was declined",
  requires_action: "the card needs authentication, which cannot happen off-session",
  no_answer: "Stripe did not answer",
  expired_card: "the card has expired",
  insufficient_funds: "the card has insufficient funds",
};

/** One active alert as a sentence, with where to act on it. */
function alertLine(a: ActiveAlert): { text: string; href: string; action: string } {
  switch (a.type) {
    case "balance.low":
      return {
        text: `Your balance, ${formatMoney(a.balance)}, is below your alert threshold of ${
          formatMoney(a.threshold)
        }.`,
        href: "/dashboard/settings/billing",
        action: "Buy credit",
      };
    case "key.limit_threshold":
      return {
        text: `The key “${a.key_name}” has spent ${formatMoney(a.spend)} of its ${
          formatMoney(a.credit_limit)
        } limit (${formatPercent(a.threshold * 100)} reached).`,
        href: "/dashboard/keys",
        action: "Keys",
      };
    case "auto_topup.failed": {
      const why = a.reason ? REASONS[a.reason] ?? a.reason.replaceAll("_", " ") : "it failed";
      return {
        text: a.disabled
          ? `Auto top-up was turned off after ${a.failures} failed attempts: ${why}.`
          : `Auto top-up of ${formatMoney(a.amount)} failed: ${why}.`,
        href: "/dashboard/settings/billing#saved-card",
        action: "Update the card",
      };
    }
    case "credits.refunded":
      return {
        text: `A payment was refunded or disputed: ${
          formatMoney(a.amount.replace(/^-/, ""))
        } of credit was taken back.`,
        href: "/dashboard/settings/billing?type=adjustment",
        action: "Transactions",
      };
  }
}

/** The alerts active now (GET /v1/alerts), on every dashboard page. */
function AlertBanner({ alerts }: { alerts: readonly ActiveAlert[] }) {
  if (alerts.length === 0) return null;
  return (
    <div class="alert-banner" role="alert" id="alert-banner">
      {alerts.map((a) => {
        const l = alertLine(a);
        return (
          <p data-alert={a.type}>
            {l.text} <a href={l.href}>{l.action}</a>
          </p>
        );
      })}
    </div>
  );
}

/** The customer dashboard: navigation, account switcher and sign-out around a page. */
export function DashboardShell(
  { viewer, active, title, children, alerts }: ShellProps & { alerts: readonly ActiveAlert[] },
) {
  const who = (
    <>
      {viewer.accounts.length > 1
        ? (
          <form method="post" action="/dashboard/switch" class="switcher">
            <input type="hidden" name="_csrf" value={viewer.session.csrf} />
            <label for="account-switch" class="sr-only">Account</label>
            <select id="account-switch" name="account_id">
              {viewer.accounts.map((a) => (
                <option value={a.id} selected={a.id === viewer.account?.id}>{a.name}</option>
              ))}
            </select>
            <button type="submit" class="small secondary">Switch</button>
          </form>
        )
        : <span class="account-name">{viewer.account?.name}</span>}
      <span class="user-email">{viewer.user?.email}</span>
      <SignOut viewer={viewer} />
    </>
  );
  const nav = (
    <nav class="sidenav" aria-label="Dashboard">
      {NAV.map((n) => (
        <a href={n.href} aria-current={n.id === active ? "page" : undefined}>
          {n.href.startsWith("/dashboard/settings/") ? <span class="crumb">Settings ›</span> : null}
          {n.label}
        </a>
      ))}
    </nav>
  );
  return (
    <SignedInFrame topbarClass="topbar" home="/dashboard" who={who} nav={nav} title={title}>
      <AlertBanner alerts={alerts} />
      {children}
    </SignedInFrame>
  );
}

/** The operator's pages. */
export function AdminShell(
  { viewer, active, title, children }: ShellProps,
) {
  const who = (
    <>
      <span class="badge">Operator</span>
      <SignOut viewer={viewer} />
    </>
  );
  const nav = (
    <nav class="sidenav" aria-label="Admin">
      <a href="/dashboard/admin" aria-current={active === "accounts" ? "page" : undefined}>
        Accounts
      </a>
    </nav>
  );
  return (
    <SignedInFrame
      topbarClass="topbar admin"
      home="/dashboard/admin"
      who={who}
      nav={nav}
      title={title}
    >
      {children}
    </SignedInFrame>
  );
}

/** A money figure for people, with the exact decimal kept in `data-usd` and the tooltip. */
export function Money({ usd }: { usd: string }) {
  return <span class="money" data-usd={usd} title={`${usd} USD`}>{formatMoney(usd)}</span>;
}

export function Count({ n }: { n: number }) {
  return <span class="num">{formatCount(n)}</span>;
}

export function Percent({ p }: { p: number }) {
  return <span class="num">{formatPercent(p)}</span>;
}

/** One headline figure. */
export function Metric(
  { label, children, hint, id }: {
    label: string;
    children: ComponentChildren;
    hint?: ComponentChildren;
    id?: string;
  },
) {
  return (
    <div class="metric" id={id}>
      <div class="metric-label">{label}</div>
      <div class="metric-value">{children}</div>
      {hint ? <div class="metric-hint">{hint}</div> : null}
    </div>
  );
}

/** What a page shows when there is nothing yet. */
export function Empty({ children }: { children: ComponentChildren }) {
  return <div class="empty">{children}</div>;
}

/** A notice (success or error) after a form. */
export function Notice({ kind, children }: { kind: "ok" | "error"; children: ComponentChildren }) {
  return <div class={`notice ${kind}`} role={kind === "error" ? "alert" : "status"}>{children}
  </div>;
}

/**
 * The link to the next (older) page of a cursor-paged table: this page's query with the cursor
 * set and the `drop` parameters removed; nothing when there is no next page.
 */
export function OlderLink(
  { url, cursor, label, drop = [] }: {
    url: URL;
    cursor: string | null;
    label: string;
    drop?: string[];
  },
) {
  if (!cursor) return null;
  const next = new URLSearchParams(url.searchParams);
  for (const name of drop) next.delete(name);
  next.set("cursor", cursor);
  return (
    <p>
      <a class="button secondary" href={`?${next}`}>{label}</a>
    </p>
  );
}
