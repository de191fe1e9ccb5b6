import type { ComponentType } from "preact";
import { renderToString } from "preact-render-to-string";
import type { VNode } from "preact";

/** The islands met while rendering one page, in order; null outside a render. */
let collected: { name: string; props: unknown }[] | null = null;

/**
 * Marks an interactive component (the default export of an islands/ module): the server renders it
 * inside a `data-island` element and keeps its props for the page's one serialised island list;
 * the client entry hydrates it there. The island's name is its component's, which the build checks
 * is its file's (tools/registries.ts), the name the client's registry loads it by.
 *
 * @example
 * ```tsx
 * <Island component={KeysManager} props={{ keys, csrf }} />
 * ```
 */
export function Island<P extends Record<string, unknown>>(
  { component: C, props }: { component: ComponentType<P>; props: P },
) {
  const name = C.name;
  const id = collected ? collected.push({ name, props }) - 1 : -1;
  return (
    <div data-island={name} data-island-id={String(id)} class="island">
      <C {...props} />
    </div>
  );
}

/** JSON safe inside a `<script>` element. */
export function scriptJson(v: unknown): string {
  return JSON.stringify(v).replace(/</g, "\\u003c").replace(/\u2028/g, "\\u2028").replace(
    /\u2029/g,
    "\\u2029",
  );
}

/** Renders a page body; returns its HTML and the islands it holds (each island's props once). */
export function renderWithIslands(
  vnode: VNode,
): { html: string; islands: { name: string; props: unknown }[] } {
  const prev = collected;
  collected = [];
  try {
    const html = renderToString(vnode);
    return { html, islands: collected };
  } finally {
    collected = prev;
  }
}
