/**
 * The admin endpoint of a running core: loopback-only HTTP with a bearer token, announced in
 * `<data>/core.json` (mode 0600) so that `bolt-core plugins` on the same machine can find it.
 *
 * `POST /api/request/<service>` forwards a JSON body to a bus service and returns its answer: the
 * way the CLI reaches what plugins offer (`hosts`, `keys`, ...) without the core knowing them.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { BoltError, toErrorInfo } from '../../plugin-sdk/src/errors.ts';
import type { Bus } from '../../plugin-sdk/src/index.ts';
import type { Supervisor } from '../supervisor/index.ts';

/** What `<data>/core.json` holds. */
export interface CoreInfo {
  pid: number;
  roles: string[];
  startedAt: string;
  admin: { url: string; token: string };
}

export class AdminServer {
  private server: Server | undefined;
  private readonly token = randomBytes(32).toString('base64url');
  private readonly file: string;
  private readonly supervisor: Supervisor;
  private readonly roles: string[];
  private readonly bus: Bus;

  constructor(opts: { dataDir: string; supervisor: Supervisor; roles: string[]; bus: Bus }) {
    this.file = path.join(opts.dataDir, 'core.json');
    this.supervisor = opts.supervisor;
    this.roles = opts.roles;
    this.bus = opts.bus;
  }

  async start(): Promise<CoreInfo> {
    const server = createServer((req, res) => void this.handle(req, res));
    server.requestTimeout = 10_000;
    server.headersTimeout = 5_000;
    server.maxHeadersCount = 50;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    this.server = server;
    const { port } = server.address() as AddressInfo;
    const info: CoreInfo = { pid: process.pid, roles: this.roles, startedAt: new Date().toISOString(), admin: { url: `http://127.0.0.1:${port}`, token: this.token } };
    const tmp = `${this.file}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify(info, null, 2), { mode: 0o600 });
    await rename(tmp, this.file);
    return info;
  }

  async close(): Promise<void> {
    const current = await readFile(this.file, 'utf8').then((t) => JSON.parse(t) as CoreInfo, () => undefined);
    if (current?.pid === process.pid) await rm(this.file, { force: true });
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.server?.closeAllConnections();
  }

  private authorized(req: IncomingMessage): boolean {
    const given = Buffer.from(req.headers.authorization ?? '');
    const expected = Buffer.from(`Bearer ${this.token}`);
    return given.length === expected.length && timingSafeEqual(given, expected);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const send = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (!this.authorized(req)) {
      send(401, { error: { code: 'BOLT_ERR_ADMIN_UNAUTHORIZED', message: 'missing or wrong bearer token (see core.json in the data directory)' } });
      return;
    }
    const url = new URL(req.url ?? '/', 'http://admin');
    try {
      if (req.method === 'GET' && url.pathname === '/api/plugins') {
        send(200, { plugins: this.supervisor.list() });
        return;
      }
      if (req.method === 'GET' && url.pathname === '/api/health') {
        send(200, { ok: true, pid: process.pid, roles: this.roles, uptimeS: Math.round(process.uptime()) });
        return;
      }
      const restart = /^\/api\/plugins\/([a-z][a-z0-9-]{0,63})\/restart$/.exec(url.pathname);
      if (req.method === 'POST' && restart) {
        send(200, { plugin: await this.supervisor.restart(restart[1]!) });
        return;
      }
      const service = /^\/api\/request\/([a-z][a-z0-9.-]{0,127})$/.exec(url.pathname);
      if (req.method === 'POST' && service) {
        const data = await readJsonBody(req);
        send(200, { result: await this.bus.request(service[1]!, data, { timeoutMs: 15_000 }) });
        return;
      }
      send(404, { error: { code: 'BOLT_ERR_CLI_USAGE', message: `no admin route ${req.method} ${url.pathname}` } });
    } catch (err) {
      const info = toErrorInfo(err);
      send(err instanceof BoltError && err.code === 'BOLT_ERR_PLUGIN_NOT_FOUND' ? 404 : 500, { error: { code: info.code, message: info.message } });
    }
  }
}

const MAX_REQUEST_BYTES = 1024 * 1024;

/** The request body as JSON (undefined when empty); refuses more than 1 MiB. */
async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_REQUEST_BYTES) throw new BoltError('BOLT_ERR_CLI_USAGE', `admin request body exceeds ${MAX_REQUEST_BYTES} bytes`);
    chunks.push(chunk);
  }
  if (size === 0) return undefined;
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (cause) {
    throw new BoltError('BOLT_ERR_CLI_USAGE', 'admin request body is not JSON', { cause });
  }
}
