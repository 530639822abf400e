/** Finds the running core for a data directory (core.json) and calls its admin API. */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { BoltError } from '../../plugin-sdk/src/errors.ts';
import type { CoreInfo } from '../admin/index.ts';

export async function readCoreInfo(dataDir: string): Promise<CoreInfo> {
  const file = path.join(path.resolve(dataDir), 'core.json');
  let info: CoreInfo;
  try {
    info = JSON.parse(await readFile(file, 'utf8')) as CoreInfo;
  } catch {
    throw new BoltError('BOLT_ERR_CLI_NOT_RUNNING', `no running core found for ${path.resolve(dataDir)} (${file} is missing); start one with 'bolt-core start' or pass --data`);
  }
  try {
    process.kill(info.pid, 0);
  } catch {
    throw new BoltError('BOLT_ERR_CLI_NOT_RUNNING', `the core that wrote ${file} (pid ${info.pid}) is not running`);
  }
  return info;
}

export async function adminRequest<T>(dataDir: string, method: 'GET' | 'POST', route: string, body?: unknown): Promise<T> {
  const info = await readCoreInfo(dataDir);
  let res: Response;
  try {
    res = await fetch(`${info.admin.url}${route}`, {
      method,
      headers: { authorization: `Bearer ${info.admin.token}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
      ...(body !== undefined && { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(20_000),
    });
  } catch (err) {
    throw new BoltError('BOLT_ERR_CLI_NOT_RUNNING', `the core at ${info.admin.url} (pid ${info.pid}) did not answer: ${(err as Error).message}`, { cause: err });
  }
  const answer = (await res.json()) as T & { error?: { code: string; message: string } };
  if (!res.ok) {
    const e = new Error(answer.error?.message ?? `admin API answered ${res.status}`) as Error & { code: string };
    e.code = answer.error?.code ?? 'ERR_UNKNOWN';
    throw e;
  }
  return answer;
}

/** Calls a bus service of the running core (through its admin endpoint) and returns the answer. */
export async function serviceRequest<T>(dataDir: string, service: string, data?: unknown): Promise<T> {
  const { result } = await adminRequest<{ result: T }>(dataDir, 'POST', `/api/request/${service}`, data ?? {});
  return result;
}
