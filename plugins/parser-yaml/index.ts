/**
 * The `parser-yaml` bus service (a pool plugin: the core serves this function as the service named
 * after the plugin). Request `{ text, file, vars?, knownActions? }`, response a ParseResult: `{ job }`
 * for a valid job, else `{ issues }` naming file, line and column. Bad input yields issues, never an
 * error; only a request of the wrong shape is refused (TypeError).
 */
import { defineParser } from 'bolt-plugin-sdk';
import { parseJob, type ParseResult } from './parse.ts';

export type { JobIssue, ParseResult } from './parse.ts';

/** What `parser-yaml` takes. */
export interface ParseRequest {
  /** The job file's contents. */
  text: string;
  /** Shown in issues; a name ending in `.json` selects strict JSON. */
  file: string;
  /** `--var NAME=VALUE` values; override the file's vars. */
  vars?: Record<string, string>;
  /** Actions the clients can run; a task naming another one is an issue. Omitted: any action. */
  knownActions?: string[];
}

function isStringRecord(value: unknown): value is Record<string, string> {
  return value !== null && typeof value === 'object' && !Array.isArray(value) && Object.values(value).every((v) => typeof v === 'string');
}

export default defineParser((input: ParseRequest): ParseResult => {
  const req = input as Partial<ParseRequest> | null;
  if (req === null || typeof req !== 'object' || typeof req.text !== 'string' || typeof req.file !== 'string') {
    throw new TypeError('parser-yaml takes { text: string, file: string, vars?: { [name]: string }, knownActions?: string[] }');
  }
  if (req.vars !== undefined && !isStringRecord(req.vars)) throw new TypeError('parser-yaml: vars must map names to strings');
  if (req.knownActions !== undefined && !(Array.isArray(req.knownActions) && req.knownActions.every((a) => typeof a === 'string'))) {
    throw new TypeError('parser-yaml: knownActions must be a list of strings');
  }
  return parseJob(req.text, {
    file: req.file,
    ...(req.vars !== undefined && { vars: req.vars }),
    ...(req.knownActions !== undefined && { knownActions: req.knownActions }),
  });
});
