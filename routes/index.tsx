import type { PageConfig, PageCtx, PageProps } from "../lib/render/page.tsx";

export const config: PageConfig = {
  title: "LLM gateway on prepaid credit",
  auth: "public",
  layout: "public",
};

export const handler = {
  GET: (ctx: PageCtx) => ({ data: { signedIn: ctx.viewer?.session.kind === "user" } }),
};

/** The landing page: what the router is, and the way in. */
export default function Landing({ data }: PageProps<{ signedIn: boolean }>) {
  return (
    <section class="hero">
      <h1>One API for every model, billed to the nano-dollar</h1>
      <p class="lead">
        Point your OpenAI or Anthropic SDK at Enterprise Router. Buy credit, create keys, and see
        what you spent, on what, and what you saved against the providers' market rates.
      </p>
      <p class="actions">
        {data.signedIn ? <a class="button" href="/dashboard">Open the dashboard</a> : (
          <>
            <a class="button" href="/signup">Create an account</a>
            <a class="button secondary" href="/signin">Sign in</a>
          </>
        )}
      </p>
    </section>
  );
}
