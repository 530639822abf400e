import { expect } from 'chai';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { BoltError } from '../../../plugin-sdk/src/errors.ts';
import {
  filesystemUsageFromStatfs,
  parseDiskstats,
  parseLoadavg,
  parseMeminfo,
  parseNetDev,
  parseProcStat,
  readFilesystemUsage,
  readLoadavg,
  readMeminfo,
  readNetDev,
  readProcStat,
  readProcText,
  selectDisks,
  selectInterfaces,
} from '../procfs.ts';
import type { CpuTimes, DiskCounters } from '../procfs.ts';

const fixture = (name: string): Promise<string> => readFile(new URL(`./fixtures/${name}`, import.meta.url), 'latin1');

function sumOver(cores: Iterable<CpuTimes>, field: keyof CpuTimes): number {
  let sum = 0;
  for (const c of cores) sum += c[field];
  return sum;
}

function byName(disks: readonly DiskCounters[]): Map<string, DiskCounters> {
  return new Map(disks.map((d) => [d.name, d]));
}

async function expectSourceError(promise: Promise<unknown>): Promise<BoltError> {
  try {
    await promise;
  } catch (err) {
    expect(err).to.be.instanceOf(BoltError);
    expect((err as BoltError).code).to.equal('BOLT_ERR_METRICS_SOURCE_UNREADABLE');
    return err as BoltError;
  }
  expect.fail('expected the read to be rejected');
}

describe('collector-system procfs parsers', () => {
  describe('/proc/stat', () => {
    it('reads the aggregate and per-core lines of a 6.18 kernel', async () => {
      const stat = parseProcStat(await fixture('proc-stat-6.18-2cpu.txt'));
      expect(stat.total).to.deep.equal({ user: 13091, nice: 1, system: 3089, idle: 67631, iowait: 450, irq: 0, softirq: 135, steal: 15 });
      expect([...stat.cores.keys()]).to.deep.equal([0, 1]);
      expect(stat.cores.get(1)).to.deep.equal({ user: 8459, nice: 1, system: 1591, idle: 31819, iowait: 217, irq: 0, softirq: 124, steal: 11 });
    });

    it('keys 63 cores by their number when cpu7 is offline', async () => {
      const stat = parseProcStat(await fixture('proc-stat-64cpu-offline7.txt'));
      expect(stat.cores.size).to.equal(63);
      expect(stat.cores.has(7)).to.equal(false);
      expect(stat.cores.has(63)).to.equal(true);
      for (const field of ['user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq', 'steal'] as const) {
        expect(sumOver(stat.cores.values(), field), field).to.equal(stat.total[field]);
      }
    });

    it('reads steal as 0 on a 2.6.9 kernel that prints no steal column', async () => {
      const stat = parseProcStat(await fixture('proc-stat-2.6.9-no-steal.txt'));
      expect(stat.total).to.deep.equal({ user: 2255, nice: 34, system: 2290, idle: 22625563, iowait: 6290, irq: 127, softirq: 456, steal: 0 });
      expect(stat.cores.get(0)?.steal).to.equal(0);
      expect(stat.cores.get(1)?.softirq).to.equal(18);
    });

    it('reads the four columns of a 2.4 kernel and zero for the rest', async () => {
      const stat = parseProcStat(await fixture('proc-stat-2.4-four-columns.txt'));
      expect(stat.total).to.deep.equal({ user: 1279636934, nice: 73759586, system: 192327563, idle: 12184330186, iowait: 0, irq: 0, softirq: 0, steal: 0 });
      expect(stat.cores.size).to.equal(2);
    });

    it('refuses text without an aggregate cpu line', () => {
      expect(() => parseProcStat('intr 1 2 3\nctxt 5\n')).to.throw(BoltError).with.property('code', 'BOLT_ERR_METRICS_SOURCE_UNREADABLE');
    });
  });

  describe('/proc/meminfo', () => {
    it('converts kB to bytes and takes MemAvailable when the kernel prints it', async () => {
      const mem = parseMeminfo(await fixture('meminfo-6.18.txt'));
      expect(mem).to.deep.equal({
        total: 24684084 * 1024,
        free: 23868772 * 1024,
        available: 24126016 * 1024,
        cached: 375752 * 1024,
        buffers: 12440 * 1024,
        swapTotal: 0,
        swapFree: 0,
      });
    });

    it('estimates available as free + buffers + cached on a kernel before 3.14', async () => {
      const mem = parseMeminfo(await fixture('meminfo-2.6.18-no-available.txt'));
      expect(mem.available).to.equal((4176800 + 153344 + 2822448) * 1024);
      expect(mem.swapTotal - mem.swapFree).to.equal((2097144 - 1048572) * 1024);
    });

    it('refuses text without MemTotal', () => {
      expect(() => parseMeminfo('MemFree: 10 kB\n')).to.throw(BoltError).with.property('code', 'BOLT_ERR_METRICS_SOURCE_UNREADABLE');
    });
  });

  describe('/proc/net/dev', () => {
    it('reads every interface of a 6.18 kernel and skips the two header lines', async () => {
      const net = parseNetDev(await fixture('net-dev-6.18.txt'));
      expect([...net.keys()]).to.deep.equal(['lo', 'ifb0', 'ifb1', 'eth0']);
      expect(net.get('eth0')).to.deep.equal({ rxBytes: 219148012, rxPackets: 6097, rxErrors: 0, rxDrops: 0, txBytes: 409755, txPackets: 3883, txErrors: 0, txDrops: 0 });
      expect(net.get('lo')?.rxBytes).to.equal(net.get('lo')?.txBytes);
    });

    it('parses a long name glued to its first number, names holding colons, dots and dashes, and 2^53 - 1', async () => {
      const net = parseNetDev(await fixture('net-dev-odd-names.txt'));
      expect([...net.keys()]).to.deep.equal(['lo', 'enp0s31f6', 'br-4f2a9c1d7e3b', 'eth0:1', 'vlan.100']);
      expect(net.get('enp0s31f6')).to.deep.equal({ rxBytes: 4294967295, rxPackets: 3000000, rxErrors: 1, rxDrops: 2, txBytes: 987654321, txPackets: 2500000, txErrors: 3, txDrops: 4 });
      expect(net.get('eth0:1')).to.deep.equal({ rxBytes: 7000, rxPackets: 70, rxErrors: 0, rxDrops: 1, txBytes: 8000, txPackets: 80, txErrors: 0, txDrops: 2 });
      expect(net.get('vlan.100')?.rxBytes).to.equal(Number.MAX_SAFE_INTEGER);
      expect(net.get('vlan.100')?.txBytes).to.equal(2 ** 32);
    });

    it('keeps the interfaces a filter names or does not exclude', async () => {
      const net = parseNetDev(await fixture('net-dev-odd-names.txt'));
      expect([...selectInterfaces(net, { include: ['lo', 'missing0'] }).keys()]).to.deep.equal(['lo']);
      expect([...selectInterfaces(net, { exclude: ['^br-', '^lo$'] }).keys()]).to.deep.equal(['enp0s31f6', 'eth0:1', 'vlan.100']);
      expect(selectInterfaces(net).size).to.equal(5);
    });
  });

  describe('/proc/diskstats', () => {
    it('reads 17-field (5.5+) and 11-field (before 4.18) lines', async () => {
      const disks = byName(parseDiskstats(await fixture('diskstats-5.x-nvme-sata-dm.txt')));
      expect(disks.get('nvme0n1')).to.deep.equal({
        major: 259, minor: 0, name: 'nvme0n1', readsCompleted: 210334, sectorsRead: 15872354, writesCompleted: 512233, sectorsWritten: 40213344, ioTicksMs: 215340,
      });
      expect(disks.get('sda')).to.deep.equal({ major: 8, minor: 0, name: 'sda', readsCompleted: 1200, sectorsRead: 90000, writesCompleted: 600, sectorsWritten: 45000, ioTicksMs: 5200 });
      expect(disks.size).to.equal(11);
    });

    it('reads the virtio disk, zram and loop devices of a 6.18 VM', async () => {
      const disks = parseDiskstats(await fixture('diskstats-6.18-vm.txt'));
      expect(disks.map((d) => d.name)).to.deep.equal(['loop0', 'loop1', 'loop2', 'loop3', 'loop4', 'loop5', 'loop6', 'loop7', 'vda', 'zram0']);
      expect(byName(disks).get('vda')).to.deep.equal({ major: 254, minor: 0, name: 'vda', readsCompleted: 47050, sectorsRead: 2412074, writesCompleted: 45106, sectorsWritten: 3553672, ioTicksMs: 7920 });
      expect(selectDisks(disks, {}, new Set(disks.map((d) => d.name))).map((d) => d.name)).to.deep.equal(['vda', 'zram0']);
    });

    it('reads the 4-counter partition lines of 2.6 kernels without io ticks', async () => {
      const disks = byName(parseDiskstats(await fixture('diskstats-2.6-partition-lines.txt')));
      expect(disks.get('hda')?.ioTicksMs).to.equal(3376340);
      expect(disks.get('hda1')).to.deep.equal({ major: 3, minor: 1, name: 'hda1', readsCompleted: 35486, sectorsRead: 38030, writesCompleted: 38030, sectorsWritten: 38030 });
    });

    it('keeps whole devices and drops partitions, loop and ram devices by default', async () => {
      const disks = parseDiskstats(await fixture('diskstats-5.x-nvme-sata-dm.txt'));
      // What /sys/block lists on that host: whole devices only, partitions live under their disk.
      const wholeDisks = new Set(['loop0', 'loop1', 'ram0', 'nvme0n1', 'sda', 'dm-0', 'md0', 'zram0']);
      expect(selectDisks(disks, {}, wholeDisks).map((d) => d.name)).to.deep.equal(['nvme0n1', 'sda', 'dm-0', 'md0', 'zram0']);
      expect(selectDisks(disks, { partitions: true }, wholeDisks).map((d) => d.name)).to.deep.equal(['nvme0n1', 'nvme0n1p1', 'nvme0n1p2', 'sda', 'sda1', 'dm-0', 'md0', 'zram0']);
      expect(selectDisks(disks, { exclude: ['^dm-', '^loop'] }, wholeDisks).map((d) => d.name)).to.deep.equal(['ram0', 'nvme0n1', 'sda', 'md0', 'zram0']);
      expect(selectDisks(disks, { include: ['sda1', 'loop0'] }, wholeDisks).map((d) => d.name)).to.deep.equal(['loop0', 'sda1']);
    });

    it('lets partitions through when /sys/block could not be listed', async () => {
      const disks = parseDiskstats(await fixture('diskstats-5.x-nvme-sata-dm.txt'));
      expect(selectDisks(disks).map((d) => d.name)).to.include.members(['nvme0n1p1', 'sda1']).and.not.include('loop0');
    });
  });

  describe('/proc/loadavg', () => {
    it('reads the three averages and the task counts', async () => {
      expect(parseLoadavg(await fixture('loadavg-busy.txt'))).to.deep.equal({ load1: 14.52, load5: 11.03, load15: 7.8, running: 17, total: 1204 });
      expect(parseLoadavg(await fixture('loadavg-6.18.txt'))).to.deep.equal({ load1: 0.28, load5: 0.31, load15: 0.17, running: 1, total: 87 });
    });

    it('refuses text that is not a load average', () => {
      expect(() => parseLoadavg('hello world\n')).to.throw(BoltError).with.property('code', 'BOLT_ERR_METRICS_SOURCE_UNREADABLE');
    });
  });

  describe('statfs', () => {
    it('computes use the way df does: used / (used + available to users)', () => {
      // 1000 blocks of 4 KiB, 300 free of which 250 available to unprivileged users.
      const fs = filesystemUsageFromStatfs('/data', { bsize: 4096, blocks: 1000, bfree: 300, bavail: 250 });
      expect(fs).to.deep.equal({ mount: '/data', totalBytes: 4096000, usedBytes: 700 * 4096, freeBytes: 250 * 4096, usedPercent: (700 / 950) * 100 });
      expect(filesystemUsageFromStatfs('/empty', { bsize: 4096, blocks: 0, bfree: 0, bavail: 0 }).usedPercent).to.equal(0);
    });

    it('rejects with a source error for a mount point that does not exist', async () => {
      const err = await expectSourceError(readFilesystemUsage('/no/such/mount/point'));
      expect(err.message).to.contain('/no/such/mount/point');
    });
  });

  describe('readers on this host', () => {
    it('read as many cores as the OS reports and the same total memory', async () => {
      const [stat, mem] = await Promise.all([readProcStat(), readMeminfo()]);
      expect(stat.cores.size).to.equal(cpus().length);
      expect(mem.total).to.equal(totalmem());
    });

    it('read the load average the OS reports, to its two printed decimals', async () => {
      // The kernel refreshes the averages every 5 s; a refresh between the two reads is retried.
      const deadline = Date.now() + 12_000;
      for (;;) {
        const before = loadavg()[0] ?? -1;
        const ours = (await readLoadavg()).load1;
        const after = loadavg()[0] ?? -1;
        if (Math.abs(before - after) < 0.005 || Date.now() > deadline) {
          expect(ours).to.be.closeTo(after, 0.0051);
          return;
        }
      }
    });

    it('lists the loopback interface', async () => {
      expect((await readNetDev()).has('lo')).to.equal(true);
    });

    it('reads a file longer than one read chunk whole, and rejects a missing file', async () => {
      const dir = await mkdtemp(join(tmpdir(), 'bolt-procfs-'));
      try {
        const big = 'cpu  1 2 3 4\n' + 'x'.repeat(200_000) + '\nend\n';
        await writeFile(join(dir, 'stat'), big);
        expect(await readProcText(join(dir, 'stat'))).to.equal(big);
        expect((await readProcStat(dir)).total.idle).to.equal(4);
        await expectSourceError(readMeminfo(dir));
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });
});
