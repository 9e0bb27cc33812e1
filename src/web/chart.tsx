import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

/** One series over time with uPlot, as wide as its container. */

const chartHeightPx = 150;

/** `windowSeconds`: the x axis always spans the last this many seconds, however few samples there are. */
export function TimeChart({ title, unit, times, values, windowSeconds, testId }: { title: string; unit: string; times: number[]; values: (number | null)[]; windowSeconds: number; testId: string }) {
  const container = useRef<HTMLDivElement>(null);
  const chart = useRef<uPlot | null>(null);
  const span = useRef(windowSeconds);
  span.current = windowSeconds;
  useEffect(() => {
    const element = container.current;
    if (element === null) return;
    const plot = new uPlot(
      {
        width: Math.max(element.clientWidth, 200),
        height: chartHeightPx,
        legend: { show: false },
        cursor: { show: true },
        scales: {
          x: {
            time: true,
            range: () => {
              const now = Date.now() / 1000;
              return [now - span.current, now];
            },
          },
          y: { range: (_self, low, high) => [Math.min(0, low ?? 0), Math.max(1, high ?? 1)] },
        },
        series: [{}, { label: title, stroke: '#2f6fdb', width: 2, spanGaps: true, value: (_self, value) => (value === null ? '—' : `${value} ${unit}`) }],
        axes: [{}, { size: 60 }],
      },
      [[], []],
      element,
    );
    chart.current = plot;
    const observer = new ResizeObserver(() => plot.setSize({ width: Math.max(element.clientWidth, 200), height: chartHeightPx }));
    observer.observe(element);
    return () => {
      observer.disconnect();
      plot.destroy();
      chart.current = null;
    };
  }, [title, unit]);
  useEffect(() => {
    chart.current?.setData([times, values]);
  }, [times, values]);
  return (
    <figure class="chart" data-testid={testId}>
      <figcaption>
        {title} <span class="muted">({unit})</span>
      </figcaption>
      <div ref={container} class="chart-area" />
    </figure>
  );
}
