import type { RefObject } from "preact";
import { useEffect, useRef } from "preact/hooks";
import { useSignal } from "@preact/signals";
import {
  ArcElement,
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  DoughnutController,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
} from "chart.js";
import { formatMoney } from "../lib/render/format.ts";

/** Spend per label (model or provider), USD decimal strings. */
type Spend = { label: string; cost: string }[];

export interface UsageChartsProps extends Record<string, unknown> {
  /** Every day of the period with its spend and market rate (USD decimal strings). */
  days: { day: string; cost: string; market_cost: string }[];
  models: Spend;
  providers: Spend;
}

const PALETTE = ["#3b5bdb", "#0ca678", "#f08c00", "#ae3ec9", "#e03131", "#1098ad", "#5c940d"];
const money = (v: number | string) => formatMoney(typeof v === "number" ? v.toFixed(9) : v);

/** One "Spend" dataset over labelled rows, a palette colour each (cost by model, by provider). */
const spendData = (rows: Spend) => ({
  labels: rows.map((r) => r.label),
  datasets: [{
    label: "Spend",
    data: rows.map((r) => Number(r.cost)),
    backgroundColor: rows.map((_, i) => PALETTE[i % PALETTE.length]),
  }],
});

/** A card with the canvas of one spend-per-label chart, read out to screen readers as its rows. */
function SpendFigure(
  { caption, id, canvas, rows }: {
    caption: string;
    id: string;
    canvas: RefObject<HTMLCanvasElement | null>;
    rows: Spend;
  },
) {
  return (
    <figure class="card chart-card">
      <figcaption>{caption}</figcaption>
      <div class="chart-box">
        <canvas
          ref={canvas}
          id={id}
          role="img"
          aria-label={rows.map((m) => `${m.label} ${money(m.cost)}`).join(", ") || "No spend"}
        />
      </div>
    </figure>
  );
}

/** Every chart here: no animation, sized by its box. */
const FIXED = { animation: false, responsive: true, maintainAspectRatio: false } as const;

/** Spend over time, cost by model and cost by provider, drawn with Chart.js. */
export default function UsageCharts({ days, models, providers }: UsageChartsProps) {
  const showMarket = useSignal(true);
  const drawn = useSignal(false);
  const lineRef = useRef<HTMLCanvasElement>(null);
  const modelRef = useRef<HTMLCanvasElement>(null);
  const providerRef = useRef<HTMLCanvasElement>(null);
  const line = useRef<Chart | null>(null);

  useEffect(() => {
    Chart.register(
      LineController,
      LineElement,
      PointElement,
      LinearScale,
      CategoryScale,
      BarController,
      BarElement,
      DoughnutController,
      ArcElement,
      Tooltip,
      Legend,
    );
    const tooltip = {
      callbacks: {
        label: (c: { dataset: { label?: string }; raw: unknown }) =>
          `${c.dataset.label ?? ""}: ${money(c.raw as number)}`,
      },
    };
    const charts: Chart[] = [];
    line.current = new Chart(lineRef.current!, {
      type: "line",
      data: {
        labels: days.map((d) => d.day.slice(5)),
        datasets: [
          {
            label: "Spend",
            data: days.map((d) => Number(d.cost)),
            borderColor: PALETTE[0],
            backgroundColor: PALETTE[0],
            tension: 0.25,
          },
          {
            label: "Market rate",
            data: days.map((d) => Number(d.market_cost)),
            borderColor: "#868e96",
            backgroundColor: "#868e96",
            borderDash: [6, 4],
            tension: 0.25,
          },
        ],
      },
      options: {
        ...FIXED,
        scales: { y: { beginAtZero: true, ticks: { callback: (v) => money(Number(v)) } } },
        plugins: { tooltip },
      },
    });
    charts.push(line.current);
    charts.push(
      new Chart(modelRef.current!, {
        type: "bar",
        data: spendData(models),
        options: {
          ...FIXED,
          indexAxis: "y",
          scales: { x: { beginAtZero: true, ticks: { callback: (v) => money(Number(v)) } } },
          plugins: { legend: { display: false }, tooltip },
        },
      }),
    );
    charts.push(
      new Chart(providerRef.current!, {
        type: "doughnut",
        data: spendData(providers),
        options: { ...FIXED, plugins: { tooltip } },
      }),
    );
    drawn.value = true;
    return () => charts.forEach((c) => c.destroy());
  }, []);

  useEffect(() => {
    const c = line.current;
    if (!c) return;
    c.setDatasetVisibility(1, showMarket.value);
    c.update();
  }, [showMarket.value]);

  const empty = days.every((d) => d.cost === "0");
  return (
    <div class="charts" data-drawn={drawn.value ? "true" : undefined}>
      <figure class="card chart-card wide">
        <figcaption>
          <span>Spend over time</span>
          <label class="inline">
            <input
              type="checkbox"
              checked={showMarket.value}
              onChange={(e) => showMarket.value = (e.currentTarget as HTMLInputElement).checked}
            />{" "}
            Show market rate
          </label>
        </figcaption>
        <div class="chart-box">
          <canvas
            ref={lineRef}
            id="chart-spend"
            role="img"
            aria-label={`Daily spend from ${days[0]?.day} to ${days.at(-1)?.day}`}
          />
        </div>
        {empty ? <p class="muted">No spend in this period yet.</p> : null}
      </figure>
      <SpendFigure caption="Cost by model" id="chart-models" canvas={modelRef} rows={models} />
      <SpendFigure
        caption="Cost by provider"
        id="chart-providers"
        canvas={providerRef}
        rows={providers}
      />
    </div>
  );
}
