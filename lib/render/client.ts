/**
 * The browser entry: reads the page's serialised island props and hydrates each island marked by
 * the server. Islands load as separate chunks, so a page fetches only the ones it uses.
 */
import { h, hydrate } from "preact";
import { ISLANDS } from "../gen/islands.ts";

async function boot() {
  const data = document.getElementById("__islands")?.textContent;
  const props = data ? JSON.parse(data) as { name: string; props: unknown }[] : [];
  const els = Array.from(document.querySelectorAll<HTMLElement>("[data-island]"));
  await Promise.all(els.map(async (el) => {
    const name = el.dataset.island!;
    const entry = props[Number(el.dataset.islandId)];
    const load = ISLANDS[name];
    if (!load || !entry) return;
    const mod = await load();
    hydrate(h(mod.default, entry.props as Record<string, unknown>), el);
  }));
  document.documentElement.dataset.hydrated = "true";
}

boot().catch((e) => {
  console.error("island hydration failed", e);
});
