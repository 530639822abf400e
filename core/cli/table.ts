/** Plain text tables for CLI listings (every listing also has `--json`). */
export function formatTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

/** "3s ago", "2m ago": how long since an instant (ISO 8601 text or epoch milliseconds). */
export function ago(instant: string | number, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - (typeof instant === 'number' ? instant : Date.parse(instant))) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}
