/**
 * RunStore: the scheduler's state on one SQLite file (`<dataDir>/scheduler.sqlite`, WAL), so a
 * server stopped or killed mid-run resumes its runs and schedules when it starts again.
 *
 * Guarantees:
 * - Every save is one transaction (the run's row and the task rows given with it), written with
 *   `synchronous=FULL`: when a save returns, it survives a crash of the process or the machine.
 *   The scheduler saves a task as `dispatching` before it announces or sends it.
 * - Runs are documents (JSON) keyed by run id; a run is "active" while it is running or any of its
 *   tasks still waits for a status, and `activeRuns()` returns exactly those.
 * - Failures raise BOLT_ERR_RUN_STORE_FAILED naming the file, with SQLite's error as `cause`.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { BoltError } from '../../plugin-sdk/src/errors.ts';
import { IN_FLIGHT_TASK_STATES, summarize, type RunRecord, type RunSummary, type ScheduleRecord, type TaskRecord } from './model.ts';

const SCHEMA_VERSION = 1;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS runs (
  run_id     TEXT PRIMARY KEY,
  created_at REAL NOT NULL,
  active     INTEGER NOT NULL,
  summary    TEXT NOT NULL,
  doc        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at DESC);
CREATE INDEX IF NOT EXISTS runs_active ON runs (active) WHERE active = 1;
CREATE TABLE IF NOT EXISTS tasks (
  run_id   TEXT NOT NULL,
  task_id  TEXT NOT NULL,
  position INTEGER NOT NULL,
  doc      TEXT NOT NULL,
  PRIMARY KEY (run_id, task_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS schedules (
  schedule_id TEXT PRIMARY KEY,
  job         TEXT NOT NULL UNIQUE,
  doc         TEXT NOT NULL
);
`;

/** Whether the scheduler still has something to do or wait for in this run. */
export function isActive(run: RunRecord): boolean {
  return run.state === 'running' || run.tasks.some((t) => IN_FLIGHT_TASK_STATES.has(t.state));
}

export class RunStore {
  readonly file: string;
  readonly #db: Database.Database;
  readonly #stmt: {
    upsertRun: Database.Statement;
    upsertTask: Database.Statement;
    getRun: Database.Statement;
    tasksOf: Database.Statement;
    activeRunIds: Database.Statement;
    listSummaries: Database.Statement;
    hasRun: Database.Statement;
    upsertSchedule: Database.Statement;
    deleteSchedule: Database.Statement;
    listSchedules: Database.Statement;
  };

  /** Opens (creating it and its directory if needed) the store at `file`. */
  constructor(file: string) {
    this.file = file;
    let db: Database.Database | undefined;
    try {
      mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
      db = new Database(file, { timeout: 5000 });
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version > SCHEMA_VERSION) throw new Error(`its schema version ${version} is newer than this scheduler's (${SCHEMA_VERSION})`);
      db.exec(SCHEMA);
      db.pragma(`user_version = ${SCHEMA_VERSION}`);
    } catch (err) {
      db?.close();
      throw storeError(`cannot open the scheduler's run database ${file}`, err, file);
    }
    this.#db = db;
    this.#stmt = {
      upsertRun: db.prepare(`INSERT INTO runs (run_id, created_at, active, summary, doc) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (run_id) DO UPDATE SET active = excluded.active, summary = excluded.summary, doc = excluded.doc`),
      upsertTask: db.prepare(`INSERT INTO tasks (run_id, task_id, position, doc) VALUES (?, ?, ?, ?)
        ON CONFLICT (run_id, task_id) DO UPDATE SET doc = excluded.doc`),
      getRun: db.prepare('SELECT doc FROM runs WHERE run_id = ?').pluck(),
      tasksOf: db.prepare('SELECT doc FROM tasks WHERE run_id = ? ORDER BY position').pluck(),
      activeRunIds: db.prepare('SELECT run_id FROM runs WHERE active = 1 ORDER BY created_at').pluck(),
      listSummaries: db.prepare('SELECT summary FROM runs ORDER BY created_at DESC, run_id DESC LIMIT ?').pluck(),
      hasRun: db.prepare('SELECT 1 FROM runs WHERE run_id = ?').pluck(),
      upsertSchedule: db.prepare(`INSERT INTO schedules (schedule_id, job, doc) VALUES (?, ?, ?)
        ON CONFLICT (schedule_id) DO UPDATE SET job = excluded.job, doc = excluded.doc`),
      deleteSchedule: db.prepare('DELETE FROM schedules WHERE schedule_id = ?'),
      listSchedules: db.prepare('SELECT doc FROM schedules ORDER BY job').pluck(),
    };
  }

  /**
   * Saves the run's own fields and the given tasks (every task when `tasks` is omitted; each one of
   * `run.tasks`, whose order is kept) in one durable transaction.
   */
  saveRun(run: RunRecord, tasks: readonly TaskRecord[] = run.tasks): void {
    const { tasks: _all, ...fields } = run;
    this.#write(() => {
      this.#stmt.upsertRun.run(run.runId, run.createdAt, isActive(run) ? 1 : 0, JSON.stringify(summarize(run)), JSON.stringify(fields));
      for (const task of tasks) this.#stmt.upsertTask.run(run.runId, task.taskId, run.tasks.indexOf(task), JSON.stringify(task));
    });
  }

  getRun(runId: string): RunRecord | undefined {
    const doc = this.#stmt.getRun.get(runId) as string | undefined;
    if (doc === undefined) return undefined;
    const tasks = (this.#stmt.tasksOf.all(runId) as string[]).map((t) => JSON.parse(t) as TaskRecord);
    return { ...(JSON.parse(doc) as Omit<RunRecord, 'tasks'>), tasks };
  }

  hasRun(runId: string): boolean {
    return this.#stmt.hasRun.get(runId) !== undefined;
  }

  /** Runs that are running or still wait for a task's status, oldest first. */
  activeRuns(): RunRecord[] {
    return (this.#stmt.activeRunIds.all() as string[]).map((id) => this.getRun(id)!);
  }

  /** The newest `limit` runs, newest first. */
  listRuns(limit: number): RunSummary[] {
    return (this.#stmt.listSummaries.all(limit) as string[]).map((s) => JSON.parse(s) as RunSummary);
  }

  saveSchedule(schedule: ScheduleRecord): void {
    this.#write(() => this.#stmt.upsertSchedule.run(schedule.scheduleId, schedule.job, JSON.stringify(schedule)));
  }

  deleteSchedule(scheduleId: string): void {
    this.#write(() => this.#stmt.deleteSchedule.run(scheduleId));
  }

  listSchedules(): ScheduleRecord[] {
    return (this.#stmt.listSchedules.all() as string[]).map((s) => JSON.parse(s) as ScheduleRecord);
  }

  close(): void {
    if (this.#db.open) this.#db.close();
  }

  #write(fn: () => void): void {
    try {
      this.#db.transaction(fn)();
    } catch (err) {
      throw storeError(`cannot write the scheduler's run database ${this.file}`, err, this.file);
    }
  }
}

function storeError(what: string, cause: unknown, file: string): BoltError {
  return new BoltError('BOLT_ERR_RUN_STORE_FAILED', `${what}: ${(cause as Error).message}`, { cause, details: { file } });
}
