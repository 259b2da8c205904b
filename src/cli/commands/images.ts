import type { Command } from 'commander';
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { openInput, openStrata, print, printJson, printTable, shortId, since, writeOutput } from '../context.js';
import { formatSize } from '../../util/units.js';
import type { SaveFormat } from '../../image/save.js';
import { strataError } from '../../errors.js';

// load and save (and their archive code) are imported by the commands that use them: every CLI
// call pays for the modules it loads
export function registerImageCommands(program: Command): void {
  program
    .command('import')
    .description('create an image from a tarball (plain, gzip or zstd) or a directory')
    .argument('<source>', 'FILE, DIR or - for stdin')
    .argument('[reference]', 'name:tag for the new image')
    .option('-m, --message <text>', 'commit message for the imported image')
    .action(async (source: string, reference: string | undefined, opts: { message?: string }, cmd: Command) => {
      const strata = await openStrata(cmd);
      const isDir = source !== '-' && (await stat(source)).isDirectory();
      const input = isDir ? (await import('../../archive/index.js')).tarDirectory(resolve(source)) : await openInput(source);
      const id = await strata.importImage(input, {
        ...(reference ? { ref: reference } : {}),
        ...(opts.message ? { message: opts.message } : {}),
        source: source === '-' ? '-' : resolve(source),
      });
      print(id);
    });

  program
    .command('load')
    .description('load images from a docker-archive, an OCI archive or an OCI layout directory')
    .option('-i, --input <path>', 'archive file or OCI layout directory (default: stdin)')
    .option('-q, --quiet', 'print only image IDs')
    .action(async (opts: { input?: string; quiet?: boolean }, cmd: Command) => {
      const strata = await openStrata(cmd);
      const source = opts.input ?? '-';
      const { loadImages } = await import('../../image/load.js');
      const loaded = await loadImages(strata, source === '-' ? await openInput('-') : source);
      for (const image of loaded) {
        if (opts.quiet || image.tags.length === 0) print(opts.quiet ? image.id : `Loaded image ID: ${image.id}`);
        else for (const tag of image.tags) print(`Loaded image: ${tag}`);
      }
    });

  program
    .command('save')
    .description('save images to a tar archive (docker-archive by default, or OCI)')
    .argument('<refs...>')
    .option('-o, --output <file>', 'write to a file instead of stdout')
    .option('--format <format>', 'docker or oci', 'docker')
    .action(async (refs: string[], opts: { output?: string; format: string }, cmd: Command) => {
      if (opts.format !== 'docker' && opts.format !== 'oci') throw strataError('INVALID_ARGUMENT', `--format must be docker or oci, not ${opts.format}`);
      const { saveImages } = await import('../../image/save.js');
      await writeOutput(await saveImages(await openStrata(cmd), refs, opts.format as SaveFormat), opts.output);
    });

  program
    .command('images')
    .description('list images')
    .option('-q, --quiet', 'only image IDs')
    .option('--no-trunc', 'do not truncate IDs')
    .option('--format <format>', 'json for machine-readable output')
    .action(async (opts: { quiet?: boolean; trunc: boolean; format?: string }, cmd: Command) => {
      const strata = await openStrata(cmd);
      const images = await strata.listImages();
      if (opts.format === 'json') return printJson(images);
      const id = (d: string) => (opts.trunc ? shortId(d) : d);
      if (opts.quiet) return images.forEach((i) => print(id(i.id)));
      const rows: string[][] = [];
      for (const image of images) {
        const tags = image.repoTags.length > 0 ? image.repoTags : ['<none>:<none>'];
        for (const tag of tags) {
          const colon = tag.lastIndexOf(':');
          rows.push([tag.slice(0, colon), tag.slice(colon + 1), id(image.id), since(image.created), formatSize(image.size)]);
        }
      }
      printTable(['REPOSITORY', 'TAG', 'IMAGE ID', 'CREATED', 'SIZE'], rows);
    });

  program
    .command('tag')
    .description('add a tag to an image')
    .argument('<source>')
    .argument('<target>')
    .action(async (source: string, target: string, _opts: unknown, cmd: Command) => {
      await (await openStrata(cmd)).tag(source, target);
    });

  program
    .command('rmi')
    .description('remove images (untag; delete when no tag is left)')
    .argument('<refs...>')
    .option('-f, --force', 'remove the image even if it has several tags or child images')
    .action(async (refs: string[], opts: { force?: boolean }, cmd: Command) => {
      const strata = await openStrata(cmd);
      for (const ref of refs) {
        const { untagged, deleted } = await strata.removeImage(ref, { force: opts.force ?? false });
        for (const u of untagged) print(`Untagged: ${u}`);
        for (const d of deleted) print(`Deleted: ${d}`);
      }
    });

  program
    .command('history')
    .description('show the history of an image')
    .argument('<ref>')
    .option('--no-trunc', 'do not truncate output')
    .option('--format <format>', 'json for machine-readable output')
    .action(async (ref: string, opts: { trunc: boolean; format?: string }, cmd: Command) => {
      const rows = await (await openStrata(cmd)).history(ref);
      if (opts.format === 'json') return printJson(rows);
      printTable(['IMAGE', 'CREATED', 'CREATED BY', 'SIZE', 'COMMENT'], rows.map((r) => [
        r.id === '<missing>' || !opts.trunc ? r.id : shortId(r.id),
        r.created ? since(r.created) : '',
        opts.trunc && (r.created_by ?? '').length > 45 ? `${r.created_by!.slice(0, 44)}…` : r.created_by ?? '',
        formatSize(r.size),
        r.comment ?? '',
      ]));
    });

  program
    .command('inspect')
    .description('low-level information on images or containers')
    .argument('<refs...>')
    .option('--type <type>', 'image or container')
    .action(async (refs: string[], opts: { type?: string }, cmd: Command) => {
      const strata = await openStrata(cmd);
      const out: unknown[] = [];
      for (const ref of refs) {
        if (opts.type !== 'container') {
          const image = await strata.inspectImage(ref).catch((err) => (opts.type === 'image' ? Promise.reject(err) : null));
          if (image) {
            out.push(image);
            continue;
          }
        }
        out.push(await strata.inspectContainer(ref));
      }
      printJson(out);
    });
}
