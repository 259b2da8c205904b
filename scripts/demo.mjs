// The main job: a three-layer image chain (base → fedora → apache), a container on it, changes,
// `strata diff`, `strata commit`, `strata images` and `strata info`, on the default driver.
// Every step runs the real CLI and echoes the command, so the output reads like a session.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, symlinkSync, appendFileSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = dirname(dirname(fileURLToPath(import.meta.url)));
const strataBin = join(repo, 'bin', 'strata.js');
const root = process.env.STRATA_DEMO_ROOT ?? mkdtempSync(join(tmpdir(), 'strata-demo-'));
const work = mkdtempSync(join(tmpdir(), 'strata-demo-src-'));

function strata(...args) {
  console.log(`$ strata ${args.join(' ')}`);
  const out = execFileSync(process.execPath, [strataBin, '--root', root, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  process.stdout.write(out);
  return out.trim();
}

function write(base, path, content, mode = 0o644) {
  const p = join(base, path);
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, content, { mode });
}

// A small base root filesystem.
const base = join(work, 'base');
write(base, 'etc/os-release', 'NAME="Strata Base"\nID=base\n');
write(base, 'etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n');
write(base, 'etc/motd', 'Welcome to the base image\n');
write(base, 'bin/sh', '#!/bin/true\n', 0o755);
write(base, 'usr/share/doc/base/README', 'base layer\n');
symlinkSync('/bin/sh', join(base, 'bin/bash'));
mkdirSync(join(base, 'tmp'), { mode: 0o1777 });

console.log(`Data root: ${root}\n`);
try {
  strata('import', base, 'base:1');
  console.log('\n# fedora: a container on base, changed and committed');
  strata('create', '--name', 'build-fedora', 'base:1');
  let dir = strata('mount', 'build-fedora');
  write(dir, 'etc/os-release', 'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=41\n');
  write(dir, 'etc/yum.repos.d/fedora.repo', '[fedora]\nenabled=1\n');
  unlinkSync(join(dir, 'etc/motd'));
  strata('unmount', 'build-fedora');
  strata('commit', '-m', 'fedora userland', 'build-fedora', 'fedora:41');
  strata('rm', 'build-fedora');

  console.log('\n# apache: a layer on fedora');
  strata('create', '--name', 'build-apache', 'fedora:41');
  dir = strata('mount', 'build-apache');
  write(dir, 'usr/sbin/httpd', '#!/bin/true\n', 0o755);
  write(dir, 'etc/httpd/conf/httpd.conf', 'Listen 80\nDocumentRoot "/var/www/html"\n');
  write(dir, 'var/www/html/index.html', '<h1>It works!</h1>\n');
  strata('unmount', 'build-apache');
  strata('commit', '-m', 'apache httpd', 'build-apache', 'apache:2.4');
  strata('rm', 'build-apache');

  console.log('\n# a container on apache');
  strata('create', '--name', 'web', 'apache:2.4');
  dir = strata('mount', 'web');
  write(dir, 'var/www/html/index.html', '<h1>Hello from Strata</h1>\n');
  appendFileSync(join(dir, 'etc/httpd/conf/httpd.conf'), 'ServerName web.example\n');
  write(dir, 'var/log/httpd/access_log', '127.0.0.1 - - "GET / HTTP/1.1" 200\n');
  unlinkSync(join(dir, 'usr/share/doc/base/README'));
  strata('unmount', 'web');
  strata('diff', 'web');
  strata('commit', '-m', 'site content', 'web', 'web:1');
  strata('history', 'web:1');
  strata('images');
  strata('ps');
  strata('info');
  strata('fsck');
} finally {
  rmSync(work, { recursive: true, force: true });
  if (!process.env.STRATA_DEMO_ROOT && !process.env.STRATA_DEMO_KEEP) {
    // unmount anything still mounted, then remove the demo root
    try { execFileSync(process.execPath, [strataBin, '--root', root, 'rm', '-f', 'web'], { stdio: 'ignore' }); } catch { /* already gone */ }
    rmSync(root, { recursive: true, force: true });
    console.log(`\n(demo root removed; set STRATA_DEMO_KEEP=1 to keep it)`);
  }
}
