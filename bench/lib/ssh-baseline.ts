/**
 * The peer side of `bench/shell-fanout`: run one shell command on N hosts through Ansible and
 * through plain SSH (`xargs -P N ssh`), on this one machine, and measure wall time and start skew.
 *
 * The N "hosts" are loopback addresses 127.0.0.2 … 127.0.0.(N+1) (the whole 127/8 answers on
 * Linux `lo`), all served by one private sshd started for the occasion. Each host runs
 * {@link FANOUT_COMMAND} and prints the instant it ran; start skew is the spread of those instants.
 *
 * The pieces that are not SSH-specific ({@link runTimed}, {@link fanoutResult},
 * {@link loopbackAddresses}, {@link FanoutSuite}) are exported so that Bolt's side of the same
 * benchmark plugs in next to {@link sshBaselineSuite}.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { spreadBigInt } from './stats.ts';

/** The command every host runs: prints the instant it ran, in nanoseconds since the epoch. */
export const FANOUT_COMMAND = 'date +%s%N';

/** One fan-out of {@link FANOUT_COMMAND} to N hosts. Times are milliseconds unless named `…Ns`. */
export interface FanoutResult {
  /** e.g. `ansible`, `xargs-ssh` */
  tool: string;
  /** number of hosts, equal to `hosts.length` and `instantsNs.length` */
  n: number;
  /** tool start to tool exit, monotonic clock around the spawn */
  wallMs: number;
  /** max − min of the instants the hosts ran the command */
  skewMs: number;
  /** the hosts, in the order they were given */
  hosts: string[];
  /** `instantsNs[i]` = the instant `hosts[i]` ran the command, ns since the epoch */
  instantsNs: bigint[];
  /** the wall-clock instant the tool was spawned, ns since the epoch (millisecond resolution) */
  spawnedAtNs: bigint;
  /** spawn to the first host's instant */
  firstStartMs: number;
  /** spawn to the last host's instant */
  lastStartMs: number;
}

/** What {@link runTimed} saw of one command. */
export interface TimedRun {
  argv: readonly string[];
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  /** the last 64 KiB of stderr */
  stderr: string;
  /** spawn to exit, monotonic clock */
  wallMs: number;
  /** the wall-clock instant of the spawn, ns since the epoch (millisecond resolution) */
  spawnedAtNs: bigint;
}

export interface RunTimedOptions {
  /** the whole process group is SIGKILLed when the command runs longer; the promise rejects */
  timeoutMs: number;
  env?: NodeJS.ProcessEnv;
  /** written to the command's stdin, which is then closed */
  input?: string;
}

const STDOUT_LIMIT = 16 * 1024 * 1024;
const STDERR_TAIL = 64 * 1024;
/** How long a finished command's pipes may stay open (held by a daemonized grandchild) */
const CLOSE_GRACE_MS = 5_000;

/** Process groups spawned by {@link runTimed} that are still running; killed if this process exits. */
const liveGroups = new Set<number>();
/** Synchronous last-resort cleanups, run when this process exits. */
const exitCleanups = new Set<() => void>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const pgid of liveGroups) signalGroup(pgid, 'SIGKILL');
    for (const cleanup of exitCleanups) {
      try {
        cleanup();
      } catch {
        // Exiting anyway: one failed cleanup must not stop the others.
      }
    }
  });
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // The group is already gone.
  }
}

function epochNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

/**
 * Spawns `argv` in its own process group, measures spawn-to-exit on the monotonic clock and
 * collects its output. Never hangs: past `timeoutMs` the whole group is SIGKILLed and the promise
 * rejects. Resolves with any exit code; checking it is the caller's job.
 */
export function runTimed(argv: readonly string[], options: RunTimedOptions): Promise<TimedRun> {
  const [file, ...args] = argv;
  if (file === undefined) return Promise.reject(new Error('runTimed: empty argv'));
  installExitHook();
  return new Promise((resolve, reject) => {
    const spawnedAtNs = epochNs();
    const t0 = process.hrtime.bigint();
    const child = spawn(file, args, { detached: true, env: options.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    const pgid = child.pid;
    if (pgid !== undefined) liveGroups.add(pgid);
    let stdout = '';
    let stderr = '';
    let wallMs: number | undefined;
    let exitCode: number | null = null;
    let exitSignal: NodeJS.Signals | null = null;
    let timedOut = false;
    let settled = false;
    let closeTimer: NodeJS.Timeout | undefined;

    const finish = (error?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clearTimeout(closeTimer);
      if (pgid !== undefined) liveGroups.delete(pgid);
      if (error) reject(error);
      else resolve({ argv, code: exitCode, signal: exitSignal, stdout, stderr, wallMs: wallMs ?? 0, spawnedAtNs });
    };
    const timer = setTimeout(() => {
      timedOut = true;
      if (pgid !== undefined) signalGroup(pgid, 'SIGKILL');
      finish(new Error(`timed out after ${options.timeoutMs} ms and was killed: ${argv.join(' ')}\nstderr: ${stderr.slice(-2000)}`));
    }, options.timeoutMs);

    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      if (stdout.length < STDOUT_LIMIT) stdout += chunk;
    });
    child.stderr.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-STDERR_TAIL);
    });
    child.stdin.on('error', () => {
      // The command may exit without reading its input (EPIPE); its exit status tells the story.
    });
    child.stdin.end(options.input ?? '');
    child.on('error', (error) => finish(new Error(`could not run ${file}: ${error.message}`, { cause: error })));
    child.on('exit', (code, signal) => {
      wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
      exitCode = code;
      exitSignal = signal;
      if (timedOut) return;
      // A daemonized grandchild (e.g. an ssh ControlPersist master) could hold the pipes open.
      closeTimer = setTimeout(() => {
        child.stdout.destroy();
        child.stderr.destroy();
        finish();
      }, CLOSE_GRACE_MS);
    });
    child.on('close', () => {
      if (wallMs !== undefined && !timedOut) finish();
    });
  });
}

/** Throws, with the command's output, unless `run` exited with status 0. */
function requireSuccess(run: TimedRun): TimedRun {
  if (run.code === 0) return run;
  const status = run.signal ? `signal ${run.signal}` : `status ${run.code}`;
  throw new Error(
    `${run.argv.slice(0, 3).join(' ')} … exited with ${status}\n` +
      `stdout (tail): ${run.stdout.slice(-2000)}\nstderr (tail): ${run.stderr.slice(-2000)}`,
  );
}

/**
 * `n` distinct loopback addresses 127.0.0.2, 127.0.0.3, … (continuing into 127.0.1.x past 254).
 * Linux answers the whole 127/8 on `lo`, so each can stand for one host.
 */
export function loopbackAddresses(n: number): string[] {
  if (!Number.isInteger(n) || n < 1 || n > 60_000) throw new RangeError(`host count must be an integer in 1..60000, got ${n}`);
  return Array.from({ length: n }, (_, i) => {
    const k = i + 2;
    return `127.${(k >> 16) & 255}.${(k >> 8) & 255}.${k & 255}`;
  });
}

/**
 * Builds the {@link FanoutResult} of one run from the instant each host reported. Throws unless
 * the run exited 0 and every host in `hosts` (and no other) answered exactly once: a run with
 * missing hosts is an error, not a data point.
 */
export function fanoutResult(tool: string, hosts: readonly string[], run: TimedRun, instants: ReadonlyMap<string, bigint>): FanoutResult {
  requireSuccess(run);
  const missing = hosts.filter((h) => !instants.has(h));
  const known = new Set(hosts);
  const unknown = [...instants.keys()].filter((h) => !known.has(h));
  if (missing.length > 0 || unknown.length > 0) {
    throw new Error(
      `${tool}: ${instants.size - unknown.length} of ${hosts.length} hosts answered` +
        (missing.length > 0 ? `; missing: ${missing.slice(0, 10).join(', ')}${missing.length > 10 ? ', …' : ''}` : '') +
        (unknown.length > 0 ? `; unexpected: ${unknown.slice(0, 10).join(', ')}` : '') +
        `\nstdout (tail): ${run.stdout.slice(-2000)}\nstderr (tail): ${run.stderr.slice(-2000)}`,
    );
  }
  const instantsNs = hosts.map((h) => instants.get(h)!);
  let first = instantsNs[0]!;
  let last = first;
  for (const t of instantsNs) {
    if (t < first) first = t;
    if (t > last) last = t;
  }
  return {
    tool,
    n: hosts.length,
    wallMs: run.wallMs,
    skewMs: Number(spreadBigInt(instantsNs)) / 1e6,
    hosts: [...hosts],
    instantsNs,
    spawnedAtNs: run.spawnedAtNs,
    firstStartMs: Number(first - run.spawnedAtNs) / 1e6,
    lastStartMs: Number(last - run.spawnedAtNs) / 1e6,
  };
}

/**
 * Reads `host instant` pairs out of a tool's output with `pattern` (group 1 = host, group 2 =
 * decimal nanoseconds). A host reported twice is an error.
 */
function parseInstants(tool: string, text: string, pattern: RegExp): Map<string, bigint> {
  const instants = new Map<string, bigint>();
  for (const line of text.split('\n')) {
    const m = pattern.exec(line.trim());
    if (!m) continue;
    const host = m[1]!;
    if (instants.has(host)) throw new Error(`${tool}: host ${host} answered twice`);
    instants.set(host, BigInt(m[2]!));
  }
  return instants;
}

/** A fan-out under test: one shared setup for N hosts, one or more tools run against it. */
export interface FanoutSuite {
  readonly name: string;
  /** tool names, as they appear in {@link FanoutResult.tool} */
  readonly tools: readonly string[];
  /**
   * Sets up N hosts, calls `fn` with a runner that performs one measured fan-out of the named
   * tool (any warm-up happens inside, before the first measured run), and tears everything down
   * after `fn` settles, also when it throws.
   */
  withHosts<T>(n: number, fn: (run: (tool: string) => Promise<FanoutResult>) => Promise<T>): Promise<T>;
}

/** The private sshd and the two baseline tools that reach N loopback hosts through it. */
export interface SshBaseline {
  readonly n: number;
  /** the N host addresses, 127.0.0.2 … 127.0.0.(N+1) */
  readonly addresses: readonly string[];
  /** the private sshd's port (it listens on 0.0.0.0 and admits only 127/8 clients) */
  readonly port: number;
  readonly sshdPid: number;
  /** the temp dir holding keys, configs, inventory and control sockets; removed at the end */
  readonly dir: string;
  /** `ssh` options that reach any of the addresses as root (key, port, no host key checks) */
  readonly sshOptions: readonly string[];
  /**
   * `ansible all -f N -m command -a 'date +%s%N' -o` with pipelining and ControlMaster/
   * ControlPersist. The first call opens N ssh masters on Ansible's ControlPath and makes one
   * unmeasured warm-up run, so measured runs multiplex over existing connections.
   */
  runAnsible(): Promise<FanoutResult>;
  /**
   * `xargs -P N -I{} ssh root@{} 'echo {} $(date +%s%N)'` over multiplexed connections. The
   * first call opens N ssh masters on its own ControlPath and makes one unmeasured warm-up run.
   */
  runXargsSsh(): Promise<FanoutResult>;
}

export interface SshBaselineOptions {
  /** per Ansible run; default 60 s + 2.4 s per host (5 min at N = 100) */
  ansibleTimeoutMs?: number;
  /** per `xargs ssh` run; default 30 s + 0.6 s per host */
  sshTimeoutMs?: number;
  /** progress lines (setup, warm-ups, teardown); default: silent */
  log?: (line: string) => void;
}

const PACKAGES = ['ansible', 'openssh-server', 'openssh-client'] as const;
const SSHD = '/usr/sbin/sshd';
const CONTROL_PERSIST = '900s';

/**
 * Makes sure ansible, openssh-server and openssh-client are installed, installing the missing
 * ones with apt-get when running as root. Idempotent.
 */
export async function ensurePackages(log: (line: string) => void = () => {}): Promise<void> {
  const query = await runTimed(['dpkg-query', '-W', '-f=${Package} ${Status}\n', ...PACKAGES], { timeoutMs: 30_000 });
  const installed = new Set(
    query.stdout
      .split('\n')
      .filter((l) => l.endsWith(' install ok installed'))
      .map((l) => l.split(' ')[0]),
  );
  const missing = PACKAGES.filter((p) => !installed.has(p));
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) throw new Error(`missing Debian packages ${missing.join(' ')}; install them as root`);
  log(`installing ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  let install = await runTimed(['apt-get', 'install', '-y', ...missing], { timeoutMs: 600_000, env });
  if (install.code !== 0) {
    requireSuccess(await runTimed(['apt-get', 'update'], { timeoutMs: 300_000, env }));
    install = await runTimed(['apt-get', 'install', '-y', ...missing], { timeoutMs: 600_000, env });
  }
  requireSuccess(install);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

interface ProcInfo {
  pid: number;
  ppid: number;
  zombie: boolean;
  cmdline: string;
}

function readProc(pid: number): ProcInfo | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name sits in parentheses and may contain spaces: fields follow the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
    return { pid, ppid: Number(fields[1]), zombie: fields[0] === 'Z', cmdline };
  } catch {
    return undefined;
  }
}

function allProcs(): ProcInfo[] {
  const procs: ProcInfo[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const info = readProc(Number(name));
    if (info) procs.push(info);
  }
  return procs;
}

function isAlive(pid: number): boolean {
  const info = readProc(pid);
  return info !== undefined && !info.zombie;
}

/** Every process below `root` in the process tree. */
function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const p of allProcs()) {
    const list = children.get(p.ppid) ?? [];
    list.push(p.pid);
    children.set(p.ppid, list);
  }
  const found: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    for (const child of children.get(queue.pop()!) ?? []) {
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}

/**
 * Processes whose command line names our unique temp dir: ssh masters (ours run in the
 * foreground with `ControlPath=<dir>/…`; one that ssh daemonized itself is titled
 * `ssh: <ControlPath> [mux]`) and any tool still running with our config.
 */
function processesNaming(dir: string): number[] {
  return allProcs()
    .filter((p) => p.pid !== process.pid && !p.zombie && p.cmdline.includes(dir))
    .map((p) => p.pid);
}

function signalPids(pids: readonly number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // Already gone.
    }
  }
}

/** SIGTERM, wait up to `graceMs` for the processes to go, then SIGKILL the rest. */
async function terminate(pids: readonly number[], graceMs: number): Promise<void> {
  signalPids(pids, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  let alive = pids.filter(isAlive);
  while (alive.length > 0 && Date.now() < deadline) {
    await sleep(50);
    alive = alive.filter(isAlive);
  }
  signalPids(alive, 'SIGKILL');
}

interface Sshd {
  pid: number;
  port: number;
  exited: Promise<void>;
}

/** Starts `sshd -D -e -f <config>` and resolves once it listens; retries with another port if taken. */
async function startSshd(dir: string, n: number, log: (line: string) => void): Promise<Sshd> {
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const configPath = join(dir, 'sshd_config');
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const limit = Math.max(200, 4 * n);
    writeFileSync(
      configPath,
      [
        // One socket for all of 127/8: sshd caps listen sockets at 16 (MAX_LISTEN_SOCKS) and a
        // socket bound to 127.0.0.1 does not accept connections to 127.0.0.2. AllowUsers below
        // refuses every client that is not on loopback.
        `ListenAddress 0.0.0.0:${port}`,
        'AddressFamily inet',
        `HostKey ${join(dir, 'host_ed25519')}`,
        `PidFile ${join(dir, 'sshd.pid')}`,
        `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
        'AllowUsers root@127.0.0.0/8',
        'PermitRootLogin prohibit-password',
        'PubkeyAuthentication yes',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'StrictModes no',
        'UseDNS no',
        'PrintMotd no',
        'PrintLastLog no',
        `MaxStartups ${limit}`,
        `MaxSessions ${limit}`,
        'PerSourceMaxStartups none',
        'LoginGraceTime 120',
        'Subsystem sftp /usr/lib/openssh/sftp-server',
        // Sessions get an empty HOME: bash run by sshd sources ~/.bashrc, and a developer's
        // dotfiles (pyenv init here, ~100 ms) are not part of what a fleet host pays per command.
        `SetEnv HOME=${join(dir, 'home')}`,
        'PermitUserRC no',
        // INFO, so that "Server listening on …" tells us it is up.
        'LogLevel INFO',
        '',
      ].join('\n'),
    );
    requireSuccess(await runTimed([SSHD, '-t', '-f', configPath], { timeoutMs: 30_000 }));

    const child = spawn(SSHD, ['-D', '-e', '-f', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    let stderr = '';
    const ready = await new Promise<boolean>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`sshd did not listen within 30 s: ${stderr.slice(-2000)}`)), 30_000);
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk: string) => {
        // Keep draining after start-up (sshd logs every login), keep only a tail.
        stderr = (stderr + chunk).slice(-STDERR_TAIL);
        if (stderr.includes(`Server listening on 0.0.0.0 port ${port}`)) {
          clearTimeout(timer);
          resolve(true);
        }
      });
      child.once('error', (error) => {
        clearTimeout(timer);
        reject(new Error(`could not start ${SSHD}: ${error.message}`, { cause: error }));
      });
      child.once('exit', () => {
        clearTimeout(timer);
        resolve(false);
      });
    }).catch(async (error: unknown) => {
      child.kill('SIGKILL');
      await exited;
      throw error;
    });
    if (ready && child.pid !== undefined) {
      log(`sshd pid ${child.pid} listening on 0.0.0.0:${port}`);
      return { pid: child.pid, port, exited };
    }
    if (attempt >= 3 || !stderr.includes('Address already in use')) {
      throw new Error(`sshd exited during start-up: ${stderr.slice(-2000)}`);
    }
  }
}

function ansibleTimeoutDefault(n: number): number {
  return 60_000 + 2_400 * n;
}

function sshTimeoutDefault(n: number): number {
  return 30_000 + 600 * n;
}

/**
 * Opens one ssh master connection per address, each a foreground child of this process (so it
 * is reaped and stopped by pid; a ControlPersist master would daemonize and, on a machine whose
 * init does not reap orphans, end as a zombie). Resolves once all N control sockets exist.
 */
async function openMasters(addresses: readonly string[], sshOptions: readonly string[], controlDir: string, timeoutMs: number, into: ChildProcess[]): Promise<void> {
  let failure: string | undefined;
  for (const address of addresses) {
    const child = spawn('ssh', ['-M', '-N', '-T', ...sshOptions, '-o', `ControlPath=${join(controlDir, '%C')}`, '-o', 'ControlPersist=no', `root@${address}`], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    into.push(child);
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-4096);
    });
    child.once('error', (error) => {
      failure ??= `ssh master for ${address} could not start: ${error.message}`;
    });
    child.once('exit', (code, signal) => {
      failure ??= `ssh master for ${address} exited (${signal ?? code}): ${stderr.trim()}`;
    });
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (failure) throw new Error(failure);
    // ssh binds "<path>.<random>" and renames it to the final, dot-free "%C" hash once logged in.
    const ready = readdirSync(controlDir).filter((name) => !name.includes('.')).length;
    if (ready >= addresses.length) return;
    if (Date.now() > deadline) throw new Error(`only ${ready} of ${addresses.length} ssh masters were up after ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** SIGTERM the children, SIGKILL those still running after `graceMs`; gives up waiting 2 s later. */
async function stopChildren(children: readonly ChildProcess[], graceMs: number): Promise<void> {
  const running = children.filter((c) => c.pid !== undefined && c.exitCode === null && c.signalCode === null);
  const exits = running.map((c) => new Promise<void>((resolve) => {
    c.once('exit', () => resolve());
    c.once('error', () => resolve());
  }));
  for (const c of running) c.kill('SIGTERM');
  const kill = setTimeout(() => {
    for (const c of running) c.kill('SIGKILL');
  }, graceMs);
  let giveUp: NodeJS.Timeout | undefined;
  await Promise.race([Promise.all(exits), new Promise<void>((resolve) => (giveUp = setTimeout(resolve, graceMs + 2_000)))]);
  clearTimeout(kill);
  clearTimeout(giveUp);
}

/**
 * Sets up N loopback hosts behind one private sshd (as root: installs missing packages, generates
 * a host key and a client key into a fresh temp dir, starts `sshd -D` on a free port), calls `fn`,
 * then stops every ssh master, the sshd and its sessions and removes the temp dir — also when
 * setup or `fn` throws, and (synchronously, best effort) if the process exits first.
 */
export async function withSshBaseline<T>(n: number, fn: (h: SshBaseline) => Promise<T>, options: SshBaselineOptions = {}): Promise<T> {
  const addresses = loopbackAddresses(n);
  const log = options.log ?? (() => {});
  if (process.getuid?.() !== 0) throw new Error('the SSH baseline runs a private sshd that logs in as root: run it as root');
  await ensurePackages(log);

  installExitHook();
  const dir = mkdtempSync(join(tmpdir(), 'bolt-sshb-'));
  let sshd: Sshd | undefined;
  const masters: ChildProcess[] = [];
  const exitCleanup = (): void => {
    signalPids(masters.map((c) => c.pid ?? 0).filter((pid) => pid > 0), 'SIGKILL');
    signalPids(processesNaming(dir), 'SIGKILL');
    if (sshd) signalPids([...descendants(sshd.pid), sshd.pid], 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  exitCleanups.add(exitCleanup);
  try {
    for (const name of ['host_ed25519', 'client_ed25519']) {
      requireSuccess(await runTimed(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', `bolt-bench-${name}`, '-f', join(dir, name)], { timeoutMs: 30_000 }));
    }
    writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(dir, 'client_ed25519.pub')), { mode: 0o600 });
    for (const sub of ['home', 'cm', 'acp', 'ansible-home', 'ansible-local', 'ansible-remote']) mkdirSync(join(dir, sub));
    sshd = await startSshd(dir, n, log);
    return await fn(createBaseline(dir, addresses, sshd, masters, options, log));
  } finally {
    log('stopping ssh masters and sshd');
    await stopChildren(masters, 5_000);
    // The listening sshd names our config in its title too; it goes last, after its sessions.
    await terminate(processesNaming(dir).filter((pid) => pid !== sshd?.pid), 5_000);
    if (sshd) {
      // Let the sessions end while their parent, the listening sshd, is there to reap them.
      const deadline = Date.now() + 5_000;
      let sessions = descendants(sshd.pid);
      while (sessions.length > 0 && Date.now() < deadline) {
        await sleep(50);
        sessions = descendants(sshd.pid);
      }
      await terminate(sessions, 2_000);
      await terminate([sshd.pid], 5_000);
      await sshd.exited;
    }
    rmSync(dir, { recursive: true, force: true });
    exitCleanups.delete(exitCleanup);
  }
}

function createBaseline(dir: string, addresses: readonly string[], sshd: Sshd, masters: ChildProcess[], options: SshBaselineOptions, log: (line: string) => void): SshBaseline {
  const n = addresses.length;
  const key = join(dir, 'client_ed25519');
  const noHostKeyCheck = ['-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null'];
  const sshOptions = [
    '-F', '/dev/null',
    '-p', String(sshd.port),
    '-i', key,
    '-o', 'IdentitiesOnly=yes',
    '-o', 'BatchMode=yes',
    '-o', 'LogLevel=ERROR',
    ...noHostKeyCheck,
  ];
  const ansibleTimeoutMs = options.ansibleTimeoutMs ?? ansibleTimeoutDefault(n);
  const sshTimeoutMs = options.sshTimeoutMs ?? sshTimeoutDefault(n);

  const inventory = join(dir, 'inventory.ini');
  writeFileSync(
    inventory,
    [
      '[peers]',
      ...addresses.map((a) => `${a} ansible_host=${a}`),
      '',
      '[peers:vars]',
      `ansible_port=${sshd.port}`,
      'ansible_user=root',
      `ansible_ssh_private_key_file=${key}`,
      `ansible_ssh_common_args='${noHostKeyCheck.join(' ')}'`,
      '',
    ].join('\n'),
  );
  const ansibleCfg = join(dir, 'ansible.cfg');
  const ansibleControlDir = join(dir, 'acp');
  const ansibleSshArgs = `-F /dev/null -o ControlMaster=auto -o ControlPersist=${CONTROL_PERSIST} -o IdentitiesOnly=yes -o LogLevel=ERROR`;
  writeFileSync(
    ansibleCfg,
    [
      '[defaults]',
      'host_key_checking = False',
      'retry_files_enabled = False',
      // A fixed interpreter spares one discovery round trip per host and run.
      'interpreter_python = /usr/bin/python3',
      'deprecation_warnings = False',
      'nocolor = True',
      `local_tmp = ${join(dir, 'ansible-local')}`,
      `remote_tmp = ${join(dir, 'ansible-remote')}`,
      'timeout = 60',
      '',
      '[ssh_connection]',
      'pipelining = True',
      `ssh_args = ${ansibleSshArgs}`,
      `control_path_dir = ${ansibleControlDir}`,
      // ssh's own %C hash, so the masters openMasters() starts are the ones Ansible's ssh finds.
      'control_path = %(directory)s/%%C',
      '',
    ].join('\n'),
  );
  const ansibleEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ANSIBLE_')));
  Object.assign(ansibleEnv, {
    ANSIBLE_CONFIG: ansibleCfg,
    ANSIBLE_HOME: join(dir, 'ansible-home'),
    ANSIBLE_SSH_ARGS: ansibleSshArgs,
    ANSIBLE_HOST_KEY_CHECKING: 'False',
    ANSIBLE_RETRY_FILES_ENABLED: 'False',
    ANSIBLE_PIPELINING: 'True',
    ANSIBLE_NOCOLOR: '1',
  });
  const ansibleArgv = ['ansible', 'all', '-i', inventory, '-f', String(n), '-m', 'command', '-a', FANOUT_COMMAND, '-o'];
  // `-o` prints one line per host: "127.0.0.2 | CHANGED | rc=0 | (stdout) 1764170000123456789"
  const ansibleLine = /^(\S+) \| (?:CHANGED|SUCCESS) \| rc=0 \| \(stdout\) (\d+)$/;

  const xargsControlDir = join(dir, 'cm');
  const xargsArgv = [
    'xargs', '-P', String(n), '-I{}',
    'ssh', '-n', '-T', ...sshOptions,
    '-o', 'ControlMaster=auto', '-o', `ControlPath=${join(xargsControlDir, '%C')}`, '-o', `ControlPersist=${CONTROL_PERSIST}`,
    'root@{}', `echo {} $(${FANOUT_COMMAND})`,
  ];
  const xargsLine = /^(\S+) (\d+)$/;
  const xargsInput = addresses.join('\n') + '\n';

  const ansibleOnce = async (): Promise<FanoutResult> => {
    const run = await runTimed(ansibleArgv, { timeoutMs: ansibleTimeoutMs, env: ansibleEnv });
    return fanoutResult('ansible', addresses, run, parseInstants('ansible', run.stdout, ansibleLine));
  };
  const xargsOnce = async (): Promise<FanoutResult> => {
    const run = await runTimed(xargsArgv, { timeoutMs: sshTimeoutMs, input: xargsInput });
    return fanoutResult('xargs-ssh', addresses, run, parseInstants('xargs-ssh', run.stdout, xargsLine));
  };
  const warmUp = async (tool: string, controlDir: string, once: () => Promise<FanoutResult>): Promise<void> => {
    log(`${tool}: opening ${n} ssh masters`);
    await openMasters(addresses, sshOptions, controlDir, sshTimeoutMs, masters);
    log(`${tool}: warm-up run, N=${n}`);
    await once();
  };
  let ansibleWarm: Promise<void> | undefined;
  let xargsWarm: Promise<void> | undefined;

  return {
    n,
    addresses,
    port: sshd.port,
    sshdPid: sshd.pid,
    dir,
    sshOptions,
    async runAnsible() {
      await (ansibleWarm ??= warmUp('ansible', ansibleControlDir, ansibleOnce));
      return ansibleOnce();
    },
    async runXargsSsh() {
      await (xargsWarm ??= warmUp('xargs-ssh', xargsControlDir, xargsOnce));
      return xargsOnce();
    },
  };
}

/** Ansible and `xargs ssh` against one private sshd, as a {@link FanoutSuite}. */
export function sshBaselineSuite(options: SshBaselineOptions = {}): FanoutSuite {
  return {
    name: 'ssh-baseline',
    tools: ['ansible', 'xargs-ssh'],
    withHosts: (n, fn) =>
      withSshBaseline(
        n,
        (h) =>
          fn((tool) => {
            if (tool === 'ansible') return h.runAnsible();
            if (tool === 'xargs-ssh') return h.runXargsSsh();
            return Promise.reject(new Error(`ssh-baseline has no tool '${tool}' (it has ansible, xargs-ssh)`));
          }),
        options,
      ),
  };
}

/** The 1, 5 and 15 minute load averages from /proc/loadavg. */
export function loadAverage(): [number, number, number] {
  const [one, five, fifteen] = readFileSync('/proc/loadavg', 'utf8').split(' ').map(Number);
  return [one ?? NaN, five ?? NaN, fifteen ?? NaN];
}

