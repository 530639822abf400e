/** `bolt-core report RUN --out FILE.html`: the sink's one-file report of a run, for a ticket or a mail. */
import { readFileSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { usageError, type Command } from './command.ts';
import { SERVER_OPTIONS } from './run.ts';
import { sinkBaseUrl } from './runs.ts';
import { apiToken, connectServer, type ServerApi } from './server-api.ts';

export const reportCommand: Command = {
  usage: 'bolt-core report RUN --out FILE.html [--sink URL] [--server URL] [--token TOKEN] [--data DIR] [--json]',
  summary: 'save a run as one self-contained HTML file (summary, tasks, failures, start skew, metric charts; opens without a network)',
  options: { ...SERVER_OPTIONS, out: { type: 'string' }, sink: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const [runId, ...extra] = positionals;
    if (!runId || extra.length > 0) throw usageError('report takes one run id', reportCommand);
    const out = values.out as string | undefined;
    if (!out) throw usageError('--out FILE.html is required', reportCommand);
    const ca = values['tls-ca'] as string | undefined;
    const sink = connectServer(sinkBaseUrl(values, reportCommand), await apiToken(values.token as string | undefined, (values.data as string | undefined) ?? '.bolt'), ca ? readFileSync(ca) : undefined);
    const file = path.resolve(out);
    const bytes = await saveReport(sink, runId, file);
    if (values.json) process.stdout.write(`${JSON.stringify({ runId, file, bytes })}\n`);
    else process.stdout.write(`report of run ${runId}: ${file} (${Math.ceil(bytes / 1024)} KiB)\n`);
    return 0;
  },
};

/**
 * Saves the sink's report of `runId` to `file` and returns its size in bytes. It is written beside
 * the target and renamed, so an existing report is replaced whole or not at all.
 */
export async function saveReport(sink: ServerApi, runId: string, file: string): Promise<number> {
  const html = await sink.getText(`/api/runs/${encodeURIComponent(runId)}/report.html`);
  const partial = `${file}.${process.pid}.partial`;
  await writeFile(partial, html);
  await rename(partial, file);
  return Buffer.byteLength(html);
}
