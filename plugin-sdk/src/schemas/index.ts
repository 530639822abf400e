export * from './manifest.ts';
export * from './job.ts';
export * from './wire.ts';
