#!/usr/bin/env node
// The protocol contract, docs/asyncapi.yaml, checked with the AsyncAPI tooling (offline: the
// parser's specs and rules ship in node_modules).
//
//   node scripts/contract.mjs validate [DOC]       the document is valid AsyncAPI 3 (no errors)
//   node scripts/contract.mjs frames FILE          every line of FILE (a JSON frame the server
//                                                  sent) matches a server frame's schema
//   node scripts/contract.mjs readme               README's generated tables (query parameters,
//                                                  error codes), between their contract: markers
//
// Exits 1 with the reasons when something does not hold. The end-to-end tests (cli/tests/dev.rs)
// and tests/contract.rs call it.

import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { Parser } from '@asyncapi/parser';
import Ajv from 'ajv';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const [command, arg] = process.argv.slice(2);
const contract = command === 'validate' && arg ? path.resolve(arg) : path.join(root, 'docs', 'asyncapi.yaml');

async function parse() {
  const text = await readFile(contract, 'utf8');
  const { document, diagnostics } = await new Parser().parse(text, { source: contract });
  // Severity 0 is an error; warnings and hints are printed, not fatal.
  const errors = diagnostics.filter((d) => d.severity === 0);
  for (const d of diagnostics) {
    const where = d.path.join('.');
    console.error(`${d.severity === 0 ? 'error' : 'warning'}: ${where}: ${d.message} (${d.code})`);
  }
  if (!document || errors.length > 0) {
    console.error(`${contract}: ${errors.length} error(s)`);
    process.exit(1);
  }
  return document;
}

/** The frames the server sends: what `send` operations push, and every reply. */
function serverFrames(document) {
  const frames = new Map();
  for (const operation of document.operations().all()) {
    const messages = operation.action() === 'send' ? operation.messages().all() : [];
    const reply = operation.reply();
    if (reply) messages.push(...reply.messages().all());
    for (const message of messages) frames.set(message.id(), message.payload().json());
  }
  return frames;
}

async function checkFrames(file) {
  const document = await parse();
  // strict: false, because the parser annotates schemas with x-parser-* keys.
  const ajv = new Ajv({ strict: false, allErrors: true });
  const validators = [...serverFrames(document)].map(([id, schema]) => ({
    id,
    schema,
    validate: ajv.compile(schema),
  }));
  const lines = (await readFile(file, 'utf8')).split('\n').filter((l) => l.trim() !== '');
  const failures = [];
  for (const line of lines) {
    let frame;
    try {
      frame = JSON.parse(line);
    } catch (e) {
      failures.push(`not JSON: ${line}`);
      continue;
    }
    if (validators.some((v) => v.validate(frame))) continue;
    // Explain with the schemas written for this frame's type.
    const mentions = `"const":${JSON.stringify(frame?.type)}`;
    const own = validators.filter((v) => JSON.stringify(v.schema).includes(mentions));
    if (own.length === 0) {
      failures.push(`${line}\n  no server frame in the contract has type ${JSON.stringify(frame?.type)}`);
      continue;
    }
    const why = own.map((v) => {
      v.validate(frame);
      const errors = v.validate.errors.map((e) => `${e.instancePath || '/'} ${e.message}${e.params?.additionalProperty ? ` (${e.params.additionalProperty})` : ''}`);
      return `  as ${v.id}: ${errors.join('; ')}`;
    });
    failures.push(`${line}\n${why.join('\n')}`);
  }
  if (failures.length > 0) {
    console.error(`${failures.length} of ${lines.length} frame(s) break the contract:\n${failures.join('\n')}`);
    process.exit(1);
  }
  console.log(`${lines.length} frame(s) match the contract`);
}

/** README's tables that are generated from the contract, each between its markers. */
function readmeTables(document) {
  const json = document.json();
  const cell = (text) => text.trim().replace(/\s+/g, ' ').replaceAll('|', '\\|');
  const query = json.channels.socket.bindings.ws.query.properties;
  const codes = json.components.schemas.errorCode.oneOf;
  const block = (name, header, rows) =>
    [`<!-- contract:${name} -->`, ...header, ...rows, `<!-- /contract:${name} -->`].join('\n');
  return [
    block(
      'query',
      ['| query parameter | meaning |', '|---|---|'],
      Object.entries(query).map(([name, p]) => `| \`${name}\` | ${cell(p.description)} |`),
    ),
    block(
      'errors',
      ['| code | when |', '|---|---|'],
      codes.map((c) => `| \`${c.const}\` | ${cell(c.description)} |`),
    ),
  ].join('\n\n');
}

if (command === 'validate') {
  const document = await parse();
  console.log(
    `${path.relative(root, contract)}: valid AsyncAPI ${document.version()}, ` +
      `${document.operations().all().length} operations, ${serverFrames(document).size} server frames`,
  );
} else if (command === 'readme') {
  console.log(readmeTables(await parse()));
} else if (command === 'frames' && arg) {
  await checkFrames(arg);
} else {
  console.error('usage: node scripts/contract.mjs validate [DOC] | frames FILE | readme');
  process.exit(2);
}
