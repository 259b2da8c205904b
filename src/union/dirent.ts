import type { EntryType } from './whiteout.js';

/** `readdir(…, { withFileTypes: true })` entries. */
export class UnionDirent {
  constructor(
    readonly name: string,
    readonly parentPath: string,
    private readonly type: EntryType,
  ) {}
  get path(): string {
    return this.parentPath;
  }
  isFile(): boolean { return this.type === 'file'; }
  isDirectory(): boolean { return this.type === 'dir'; }
  isSymbolicLink(): boolean { return this.type === 'symlink'; }
  isOther(): boolean { return this.type === 'other'; }
}
