/**
 * A sacrificial core for the faults that end the whole process under some isolation. It starts a
 * core whose only plugin is one fault from this folder, makes it fault, and reports on stdout, one
 * JSON object a line:
 *
 *   {"event":"ready","dir":...}     the plugin is running; the fault is triggered next
 *   {"event":"survived",...}        the plugin went down and this process lived on (contained)
 *   {"event":"no-effect",...}       the plugin kept running (the fault did nothing)
 *
 * A fault that is not contained kills this process before it can print `survived`.
 * Usage (from the repository root): node --import tsx test/faults/doomed-core.ts FAULT ISOLATION
 */
import { ISOLATIONS, type Isolation } from '../../plugin-sdk/src/index.ts';
import { startTestCore } from '../helpers/core.ts';
import { faultPluginName, installFault, triggerFault } from './zoo.ts';

const [fault, isolation] = process.argv.slice(2) as [string | undefined, string | undefined];
if (!fault || !ISOLATIONS.includes(isolation as Isolation)) {
  process.stderr.write('usage: doomed-core.ts FAULT worker|process|pool\n');
  process.exit(2);
}
const iso = isolation as Isolation;
const name = faultPluginName(fault, iso);
const say = (event: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(event)}\n`);

const tc = await startTestCore({ config: { supervisor: { maxRestarts: 1, watchdogTimeoutMs: 10_000 } } });
await installFault(tc, fault, iso);
await tc.waitFor(name, 'running', 20_000);
say({ event: 'ready', dir: tc.dir, pid: process.pid });
void triggerFault(tc.core.bus, name, iso, 20_000);
const outcome = await tc.waitFor(name, (p) => p.state !== 'running', 20_000).then(
  (status) => ({ event: 'survived', status }),
  (err: unknown) => ({ event: 'no-effect', message: (err as Error).message }),
);
say(outcome);
await tc.close();
process.exit(outcome.event === 'survived' ? 0 : 3);
