import type { ClusterEvent, MachineTable } from './types.js';

/**
 * A machine's transition table as an SVG: labels in rows by their BFS depth from `initial` (what
 * is reachable sooner sits higher), the current label highlighted, the last few transitions of the
 * entity (from its events) drawn over their edges, numbered newest first.
 */

const nodeWidth = 132;
const nodeHeight = 30;
const columnGap = 24;
const rowGap = 46;
const margin = 12;
/** How many of the entity's latest transitions are marked. */
export const recentTransitionsShown = 3;

interface Placed {
  label: string;
  x: number;
  y: number;
}

export function layoutMachine(machine: MachineTable): Map<string, Placed> {
  const depth = new Map<string, number>([[machine.initial, 0]]);
  const queue = [machine.initial];
  for (let index = 0; index < queue.length; index += 1) {
    const label = queue[index] as string;
    for (const next of machine.transitions[label] ?? []) {
      if (depth.has(next)) continue;
      depth.set(next, (depth.get(label) ?? 0) + 1);
      queue.push(next);
    }
  }
  // Labels no path reaches from `initial` still belong in the picture: one row below the rest.
  const unreachableDepth = Math.max(0, ...depth.values()) + 1;
  const labels = new Set([...Object.keys(machine.transitions), ...Object.values(machine.transitions).flat()]);
  for (const label of labels) if (!depth.has(label)) depth.set(label, unreachableDepth);
  const rows = new Map<number, string[]>();
  for (const [label, row] of depth) rows.set(row, [...(rows.get(row) ?? []), label]);
  const widest = Math.max(...[...rows.values()].map((row) => row.length));
  const placed = new Map<string, Placed>();
  for (const [row, members] of rows) {
    // Each row centred under the widest one.
    const offset = ((widest - members.length) * (nodeWidth + columnGap)) / 2;
    members.forEach((label, column) => {
      placed.set(label, { label, x: margin + offset + column * (nodeWidth + columnGap), y: margin + row * (nodeHeight + rowGap) });
    });
  }
  return placed;
}

/**
 * `testId` names the picture, its current label (`TESTID-current`) and its marked transitions
 * (`TESTID-recent`), so that two machines on one page stay apart.
 */
export function MachineDiagram({ machine, current, events, entity, testId = 'diagram' }: { machine: MachineTable; current: string | undefined; events: ClusterEvent[]; entity: string; testId?: string }) {
  // Marker ids are the document's: one set per machine kind.
  const arrow = `arrow-${machine.kind}`;
  const arrowRecent = `arrow-recent-${machine.kind}`;
  const placed = layoutMachine(machine);
  const width = Math.max(...[...placed.values()].map((node) => node.x)) + nodeWidth + margin;
  const height = Math.max(...[...placed.values()].map((node) => node.y)) + nodeHeight + margin;
  const recent = events
    .filter((event) => event.entity === entity && event.from !== null && event.from !== event.to)
    .slice(-recentTransitionsShown)
    .reverse();
  const edges = Object.entries(machine.transitions).flatMap(([from, targets]) => targets.map((to) => ({ from, to })));
  const path = (from: string, to: string): string => {
    const start = placed.get(from);
    const end = placed.get(to);
    if (start === undefined || end === undefined) return '';
    const x1 = start.x + nodeWidth / 2;
    const x2 = end.x + nodeWidth / 2;
    const downward = end.y > start.y;
    const y1 = downward ? start.y + nodeHeight : start.y;
    const y2 = downward ? end.y : end.y + nodeHeight;
    const sameRow = start.y === end.y;
    // Edges bend to one side so that a→b and b→a do not overlap; a row's own edges arc above it.
    const bend = sameRow ? -40 : 18 * (from < to ? 1 : -1);
    const controlX = (x1 + x2) / 2 + (sameRow ? 0 : bend);
    const controlY = sameRow ? start.y + bend : (y1 + y2) / 2;
    return `M${x1},${sameRow ? start.y : y1} Q${controlX},${controlY} ${x2},${sameRow ? end.y : y2}`;
  };
  return (
    <svg class="diagram" viewBox={`0 0 ${width} ${height}`} role="img" aria-label={`${machine.kind} machine, now ${current ?? 'unknown'}`} data-testid={testId}>
      <defs>
        <marker id={arrow} viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
          <path d="M0,0 L10,5 L0,10 z" class="arrow-head" />
        </marker>
        <marker id={arrowRecent} viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
          <path d="M0,0 L10,5 L0,10 z" class="arrow-head recent" />
        </marker>
      </defs>
      {edges.map(({ from, to }) => (
        <path key={`${from}>${to}`} class="edge" d={path(from, to)} marker-end={`url(#${arrow})`} />
      ))}
      {recent.map((event, index) => (
        <g key={`${event.at}-${index}`} data-testid={`${testId}-recent`} data-from={event.from ?? ''} data-to={event.to}>
          <path class="edge recent" d={path(event.from as string, event.to)} marker-end={`url(#${arrowRecent})`} />
        </g>
      ))}
      {[...placed.values()].map((node) => {
        const isCurrent = node.label === current;
        const order = recent.findIndex((event) => event.to === node.label);
        return (
          <g key={node.label} class={isCurrent ? 'node current' : 'node'} data-testid={isCurrent ? `${testId}-current` : `${testId}-node-${node.label}`} data-label={node.label}>
            <rect x={node.x} y={node.y} width={nodeWidth} height={nodeHeight} rx="6" />
            <text x={node.x + nodeWidth / 2} y={node.y + nodeHeight / 2 + 4} text-anchor="middle">
              {node.label}
              {order >= 0 ? ` ·${order + 1}` : ''}
            </text>
          </g>
        );
      })}
    </svg>
  );
}
