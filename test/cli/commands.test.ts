import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Command } from 'commander';
import { commandGroups, groupsFor } from '../../src/cli/commands/index.js';

test('each lazily loaded command group registers exactly the names it is looked up by', async () => {
  const seen = new Set<string>();
  for (const group of commandGroups) {
    const program = new Command();
    (await group.load())(program);
    const registered = program.commands.flatMap((c) => [c.name(), ...c.aliases()]);
    assert.deepEqual([...registered].sort(), [...group.names].sort());
    for (const name of registered) {
      assert.ok(!seen.has(name), `${name} is in two groups`);
      seen.add(name);
    }
  }
});

test('groupsFor picks the command\'s group past global options and their values', () => {
  const only = (argv: string[]) => groupsFor(argv).map((g) => g.names[0]);
  assert.deepEqual(only(['--root', 'images', '-s', 'vfs', 'create', 'img']), ['create']);
  assert.deepEqual(only(['--storage-opt', 'dm.fs=xfs', '-D', 'thin', 'dump', 'm']), ['thin']);
  assert.equal(groupsFor([]).length, commandGroups.length);
  assert.equal(groupsFor(['--version']).length, 0);
  assert.equal(groupsFor(['--help']).length, commandGroups.length);
  assert.equal(groupsFor(['help', 'images']).length, commandGroups.length);
  assert.equal(groupsFor(['no-such-command']).length, commandGroups.length);
});
