/**
 * `bolt-core validate JOB`: checks a job file without a server. The job parser is a plugin, so
 * this starts a private core that hosts just that plugin and asks it.
 */
import { mkdtemp, mkdir, readFile, rm, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { BUILTIN_PLUGINS_DIR, Core } from '../runtime.ts';
import { parsePairs, usageError, type Command } from './command.ts';
import { formatJobIssue, type JobIssue } from './run-view.ts';

/** The parts of a parsed job the summary shows. */
interface ParsedJob {
  name: string;
  groups: Record<string, { labels?: Record<string, string>; count?: unknown }>;
  tasks: { id: string; action: string; hosts: string[]; needs: string[]; start: string; timeoutMs?: number | null }[];
  schedule?: string;
}

/** Parses `text` with the parser-yaml plugin in a private, silent core. */
export async function parseJobLocally(text: string, file: string, vars: Record<string, string>): Promise<{ job?: ParsedJob; issues: JobIssue[] }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bolt-validate-'));
  try {
    await mkdir(path.join(dir, 'plugins'));
    await symlink(path.join(BUILTIN_PLUGINS_DIR, 'parser-yaml'), path.join(dir, 'plugins', 'parser-yaml'), 'dir');
    const core = await Core.start({ roles: ['server'], pluginDirs: [path.join(dir, 'plugins')], dataDir: path.join(dir, 'data'), configFile: path.join(dir, 'bolt.yaml'), log: pino({ level: 'silent' }) });
    try {
      return await core.bus.request('parser-yaml', { text, file, vars }, { timeoutMs: 30_000 });
    } finally {
      await core.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export const validateCommand: Command = {
  usage: 'bolt-core validate JOB [--var NAME=VALUE]... [--json]',
  summary: 'check a job file: every problem with file, line and column (exit 2), or a summary (exit 0)',
  options: {
    var: { type: 'string', multiple: true },
    json: { type: 'boolean' },
  },
  async run({ values, positionals }) {
    const [file, ...extra] = positionals;
    if (!file || extra.length > 0) throw usageError('validate takes one job file', validateCommand);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw usageError(`cannot read ${file}: ${(err as Error).message}`, validateCommand);
    }
    const vars = parsePairs((values.var as string[] | undefined) ?? [], 'var', validateCommand);
    const { job, issues } = await parseJobLocally(text, file, vars);
    if (values.json) {
      process.stdout.write(`${JSON.stringify(job ? { valid: true, job } : { valid: false, issues }, null, 2)}\n`);
      return job ? 0 : 2;
    }
    if (!job) {
      for (const issue of issues) process.stderr.write(`${formatJobIssue(issue)}\n`);
      process.stderr.write(`${file}: ${issues.length} problem${issues.length === 1 ? '' : 's'}\n`);
      return 2;
    }
    const lines = [
      `${file}: job '${job.name}' is valid`,
      `  groups: ${Object.entries(job.groups).map(([name, g]) => `${name}${g.labels && Object.keys(g.labels).length ? ` (${Object.entries(g.labels).map(([k, v]) => `${k}=${v}`).join(',')})` : ' (every host)'}`).join(', ') || '-'}`,
      `  tasks:`,
      ...job.tasks.map((t) => `    ${t.id}: ${t.action} on ${t.hosts.join(', ')}${t.needs.length ? `, after ${t.needs.join(', ')}` : ''}${t.start === 'together' ? ', starting together' : ''}`),
      ...(job.schedule ? [`  schedule: ${job.schedule}`] : []),
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
    return 0;
  },
};
