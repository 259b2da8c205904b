import type { Command } from 'commander';
import { openStrata, print, printJson, printTable } from '../context.js';
import { formatSize } from '../../util/units.js';
import { strataError } from '../../errors.js';

export function registerSystemCommands(program: Command): void {
  program
    .command('info')
    .description('storage driver status and store figures')
    .option('--format <format>', 'json for machine-readable output')
    .action(async (opts: { format?: string }, cmd: Command) => {
      const rows = await (await openStrata(cmd)).info();
      if (opts.format === 'json') return printJson(Object.fromEntries(rows.map(([k, v]) => [k.trim(), v])));
      for (const [key, value] of rows) print(`${key}: ${value}`);
    });

  const system = program.command('system').description('manage the store');
  system
    .command('df')
    .description('show disk usage')
    .option('--format <format>', 'json for machine-readable output')
    .action(async (opts: { format?: string }, cmd: Command) => {
      const rows = await (await openStrata(cmd)).systemDf();
      if (opts.format === 'json') return printJson(rows);
      printTable(['TYPE', 'TOTAL', 'ACTIVE', 'SIZE', 'RECLAIMABLE'], rows.map((r) => [r.type, String(r.total), String(r.active), formatSize(r.size), formatSize(r.reclaimable)]));
    });

  program
    .command('fsck')
    .description('verify every layer against its diff ID and repair what an interrupted command left (not while a dockerd uses the root)')
    .option('--no-repair', 'only report')
    .option('--format <format>', 'json for machine-readable output')
    .action(async (opts: { repair: boolean; format?: string }, cmd: Command) => {
      const report = await (await openStrata(cmd)).fsck({ repair: opts.repair });
      if (opts.format === 'json') printJson(report);
      else {
        for (const r of report.repaired) print(`repaired: ${r}`);
        for (const p of report.problems) print(`problem: ${p}`);
        print(`checked ${report.checkedLayers} layers and ${report.checkedImages} images: ${report.problems.length === 0 ? 'clean' : `${report.problems.length} problems`}`);
      }
      if (report.problems.length > 0) throw strataError('STORE_CORRUPT', `fsck found ${report.problems.length} problem(s)`);
    });
}
