#!/usr/bin/env node
// The JS client's frame types (clients/js/src/index.d.ts) checked against the protocol contract
// (docs/asyncapi.yaml), so that neither can change without the other:
//
//   node scripts/frame-types.mjs [DTS]
//
// For each server frame the client hands to applications, the TypeScript interface must have
// exactly the schema's properties, optional exactly where the schema does not require them, and
// the same literal values where the schema has a const or an enum. Read with the TypeScript
// compiler (types as TypeScript resolves them, inherited members included) and the AsyncAPI
// parser ($refs and allOf resolved). Exits 1 with every difference.

import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { Parser } from '@asyncapi/parser';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const DTS = path.join(root, 'clients', 'js', 'src', 'index.d.ts');

// TypeScript interface -> the contract's message (components.messages) and what the interface
// leaves out on purpose, with why.
const FRAMES = {
  ChatMessage: { message: 'messageFrame' },
  Reaction: { message: 'reactionFrame' },
  Receipt: { message: 'receiptFrame' },
  Typing: { message: 'typingFrame' },
  Presence: { message: 'presenceFrame' },
  // One interface for the four progress frames: the schema they all extend.
  Progress: { schema: 'progressEvent' },
  Ack: { message: 'ackFrame' },
  Authed: { message: 'authedFrame' },
  HistoryPage: {
    message: 'historyFrame',
    // Recovery pages (`after`, `complete`, `reads`) are the client's own business: history() never asks for one.
    omitted: ['after', 'complete', 'reads'],
  },
};

/** A schema's properties, required list, with allOf merged (the progress frames use allOf). */
function flatten(schema) {
  const out = { properties: { ...(schema.properties || {}) }, required: new Set(schema.required || []) };
  for (const part of schema.allOf || []) {
    const inner = flatten(part);
    for (const [k, v] of Object.entries(inner.properties)) out.properties[k] = { ...(out.properties[k] || {}), ...v };
    for (const r of inner.required) out.required.add(r);
  }
  return out;
}

/** The literal values a schema allows, or null when it is not a const/enum. */
function literals(schema) {
  if (!schema) return null;
  if ('const' in schema) return [schema.const];
  if (Array.isArray(schema.enum)) return schema.enum;
  return null;
}

function schemaKind(schema) {
  if (literals(schema)) return typeof literals(schema)[0];
  const t = Array.isArray(schema.type) ? schema.type.find((x) => x !== 'null') : schema.type;
  if (t === 'integer' || t === 'number') return 'number';
  if (t === 'string' || t === 'boolean' || t === 'array' || t === 'object') return t;
  if (schema.oneOf || schema.anyOf) return 'union';
  return 'unknown';
}

async function contract() {
  const text = await readFile(path.join(root, 'docs', 'asyncapi.yaml'), 'utf8');
  const { document } = await new Parser().parse(text);
  if (!document) throw new Error('docs/asyncapi.yaml does not parse (node scripts/contract.mjs validate)');
  const messages = new Map(document.components().messages().all().map((m) => [m.id(), m.payload().json()]));
  for (const s of document.components().schemas().all()) messages.set(`#/components/schemas/${s.id()}`, s.json());
  return messages;
}

function typescript(dts) {
  const program = ts.createProgram([dts], { strict: true, noEmit: true, skipLibCheck: true });
  const checker = program.getTypeChecker();
  const source = program.getSourceFile(dts);
  const interfaces = new Map();
  ts.forEachChild(source, (node) => {
    if (ts.isInterfaceDeclaration(node)) interfaces.set(node.name.text, checker.getTypeAtLocation(node));
  });
  /** name -> { optional, literals: [...] | null, kind } */
  const describe = (type) => {
    const props = new Map();
    for (const symbol of checker.getPropertiesOfType(type)) {
      const optional = (symbol.flags & ts.SymbolFlags.Optional) !== 0;
      const t = checker.getTypeOfSymbol(symbol);
      const parts = (t.isUnion() ? t.types : [t]).filter((p) => !(p.flags & ts.TypeFlags.Undefined));
      const lits = parts.every((p) => p.isLiteral() || p.flags & ts.TypeFlags.BooleanLiteral)
        ? parts.map((p) => (p.isLiteral() ? p.value : checker.typeToString(p) === 'true'))
        : null;
      const text = parts.map((p) => checker.typeToString(p)).join(' | ');
      let kind = 'unknown';
      if (lits) kind = typeof lits[0];
      else if (/^string$/.test(text)) kind = 'string';
      else if (/^number$/.test(text)) kind = 'number';
      else if (text === 'boolean' || text === 'false | true') kind = 'boolean';
      else if (/\[\]$|^Array</.test(text)) kind = 'array';
      props.set(symbol.name, { optional, literals: lits && !(kind === 'boolean' && lits.length === 2) ? lits : null, kind, text });
    }
    return props;
  };
  return { interfaces, describe };
}

/** Every difference between the `.d.ts` at `dts` and the contract (none: an empty list). */
export async function check(dts = DTS) {
  const messages = await contract();
  const { interfaces, describe } = typescript(dts);
  const problems = [];
  for (const [name, spec] of Object.entries(FRAMES)) {
    const type = interfaces.get(name);
    const key = spec.schema ? `#/components/schemas/${spec.schema}` : spec.message;
    const payload = messages.get(key);
    if (!type) { problems.push(`${name}: not an interface of ${path.relative(root, dts)}`); continue; }
    if (!payload) { problems.push(`${name}: docs/asyncapi.yaml has no ${key}`); continue; }
    const schema = flatten(payload);
    const props = describe(type);
    const omitted = new Set(spec.omitted || []);
    for (const [prop, s] of Object.entries(schema.properties)) {
      if (omitted.has(prop)) continue;
      const t = props.get(prop);
      const where = `${name}.${prop} (${spec.schema || spec.message})`;
      if (!t) { problems.push(`${where}: in the contract, missing from the type`); continue; }
      const required = schema.required.has(prop);
      if (required && t.optional) problems.push(`${where}: required by the contract, optional in the type`);
      if (!required && !t.optional) problems.push(`${where}: optional in the contract, required in the type`);
      const want = literals(s);
      if (want) {
        const have = t.literals;
        const same = have && have.length === want.length && want.every((v) => have.includes(v));
        if (!same) problems.push(`${where}: the contract allows ${JSON.stringify(want)}, the type ${t.text}`);
      } else {
        const kind = schemaKind(s);
        if (kind !== 'unknown' && kind !== 'union' && kind !== 'object' && kind !== t.kind) {
          problems.push(`${where}: ${kind} in the contract, ${t.text} in the type`);
        }
      }
    }
    for (const prop of props.keys()) {
      if (!(prop in schema.properties)) problems.push(`${name}.${prop}: in the type, not in the contract's ${spec.schema || spec.message}`);
    }
  }
  return problems;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dts = path.resolve(process.argv[2] || DTS);
  const problems = await check(dts);
  if (problems.length) {
    console.error(`${path.relative(root, dts)} differs from docs/asyncapi.yaml:\n  ${problems.join('\n  ')}`);
    process.exit(1);
  }
  console.log(`frame types agree with docs/asyncapi.yaml (${Object.keys(FRAMES).join(', ')})`);
}
