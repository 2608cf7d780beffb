// The client's frame types against docs/asyncapi.yaml (scripts/frame-types.mjs): they agree, and
// a type that drifts from the contract is caught.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { check } from '../../../scripts/frame-types.mjs';

const DTS = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'index.d.ts');

function drifted(edit) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'wsfan-types-'));
  const file = path.join(dir, 'index.d.ts');
  const text = readFileSync(DTS, 'utf8');
  const changed = edit(text);
  assert.notEqual(changed, text, 'the edit applies');
  writeFileSync(file, changed);
  return file;
}

describe('the frame types', () => {
  it('agree with the contract', async () => {
    assert.deepEqual(await check(DTS), []);
  });

  it('a missing, extra, wrongly optional or narrowed property is reported', async () => {
    const file = drifted((t) => t
      .replace("state: 'join' | 'leave';", "state: 'join';")
      .replace('  userId: string;\n', '  userId: string;\n  mood: string;\n')
      .replace('  emoji: string;\n', '')
      .replace('  duplicate: boolean;', '  duplicate?: boolean;'));
    const problems = await check(file);
    assert.deepEqual(problems.sort(), [
      'Ack.duplicate (ackFrame): required by the contract, optional in the type',
      'Presence.mood: in the type, not in the contract\'s presenceFrame',
      'Presence.state (presenceFrame): the contract allows ["join","leave"], the type "join"',
      'Reaction.emoji (reactionFrame): in the contract, missing from the type',
    ].sort());
  });
});
