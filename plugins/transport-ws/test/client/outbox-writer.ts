/**
 * Child process of the outbox test: pushes events 1, 2, 3, ... into the outbox at argv[2], one at
 * a time, and prints each number once its push has resolved (is durable), until it is killed.
 */
import { Outbox } from '../../client/outbox.ts';

const outbox = Outbox.open({ dir: process.argv[2]! });
for (let i = 1; ; i++) {
  await outbox.push({ v: 1, type: 'task.event', id: `cmd-${i}:finished`, runId: 'run-1', taskId: 'task-1', host: 'web-1', kind: 'finished', at: 1_700_000_000_000 + i, exitCode: 0 });
  process.stdout.write(`${i}\n`);
}
