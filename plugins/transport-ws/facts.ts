/**
 * What a client tells the server about its host in `hello`, gathered once at start: systeminformation
 * spawns shells for most of these (about 200 ms in all here), so they are never polled.
 */
import os from 'node:os';
import si from 'systeminformation';

export interface HostFacts {
  hostname: string;
  os: { platform: string; distro: string; release: string; kernel: string; arch: string };
  cpu: { model: string; cores: number; physicalCores: number; speedGHz: number };
  memory: { totalBytes: number };
  /** Non-internal IPv4 and IPv6 addresses of the host's interfaces. */
  addresses: string[];
  node: string;
}

/** Gathers the facts; a source that fails leaves Node's own figures in its place. */
export async function gatherFacts(): Promise<HostFacts> {
  const [osInfo, cpu] = await Promise.all([si.osInfo().catch(() => null), si.cpu().catch(() => null)]);
  const addresses = Object.values(os.networkInterfaces())
    .flatMap((list) => list ?? [])
    .filter((a) => !a.internal)
    .map((a) => a.address)
    .slice(0, 32);
  return {
    hostname: os.hostname(),
    os: {
      platform: osInfo?.platform ?? os.platform(),
      distro: osInfo?.distro ?? '',
      release: osInfo?.release ?? os.release(),
      kernel: osInfo?.kernel ?? os.release(),
      arch: osInfo?.arch ?? os.arch(),
    },
    cpu: {
      model: cpu ? `${cpu.manufacturer} ${cpu.brand}`.trim() : (os.cpus()[0]?.model ?? ''),
      cores: os.availableParallelism(),
      physicalCores: cpu?.physicalCores ?? os.cpus().length,
      speedGHz: cpu?.speed ?? 0,
    },
    memory: { totalBytes: os.totalmem() },
    addresses,
    node: process.version,
  };
}
