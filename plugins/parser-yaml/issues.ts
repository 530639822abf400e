/**
 * A problem found in a job file and its one-line form. Kept apart from the parser so that a reader
 * of issues (the scheduler refusing a job) does not load the parser itself.
 */
import type { ErrorCode } from 'bolt-plugin-sdk';

/** One problem in a job file. `line` and `column` are 1-based; both are 0 for a problem outside the file (a --var). */
export interface JobIssue {
  code: ErrorCode;
  message: string;
  file: string;
  line: number;
  column: number;
  /** JSON pointer to the value concerned, such as `/tasks/1/needs/0` (`''` for the whole job). */
  path: string;
}

/** One line: `FILE:LINE:COLUMN: CODE: message` (or `FILE: CODE: message` for a problem outside the file). */
export function formatIssue(i: JobIssue): string {
  const where = i.line > 0 ? `${i.file}:${i.line}:${i.column}` : i.file;
  return `${where}: ${i.code}: ${i.message.replace(/\s*\r?\n\s*/g, ' ')}`;
}
