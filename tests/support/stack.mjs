// `wsfan dev` for Node tests: started on free ports in its own process group, stopped with
// everything it started (moto, the Lambdas), its log kept for when a step fails.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** WSFAN_BIN runs another build (e.g. main's, to see a test fail there). */
export const WSFAN = process.env.WSFAN_BIN || path.join(REPO, 'target', 'debug', 'wsfan');
const READY_TIMEOUT_MS = 120_000;
const READY_LINE = /^wsfan dev ready: (http:\/\/\S+?)\/? (ws:\/\/\S+)\s*$/m;
const ENV_LINE = /^wsfan dev env: (.*)$/m;

export function tail(text, lines = 60) {
  return text.split('\n').slice(-lines).join('\n');
}

const running = new Set();
// A stack left running would outlive the test: stop it however the process ends.
process.on('exit', () => {
  for (const child of running) {
    try { process.kill(-child.pid, 'SIGKILL'); } catch (_) { /* gone already */ }
  }
});

/**
 * Starts `wsfan dev` with `args` added; resolves once it prints its ready lines.
 * @returns {Promise<{baseUrl: string, wsUrl: string, env: Record<string,string>, log: () => string, stop: () => Promise<void>}>}
 */
export function startStack(args = []) {
  if (!existsSync(WSFAN)) {
    throw new Error(`${WSFAN} is missing: run cargo build --workspace --bins first`);
  }
  // Its own process group, so that stopping it also stops what it started (moto, the Lambdas).
  const child = spawn(WSFAN, ['dev', '--port', '0', '--moto-port', '0', '--repo', REPO, ...args], {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
    env: { ...process.env, WSFAN_LOG_FORMAT: 'text' },
  });
  running.add(child);
  let stackLog = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stackLog = (stackLog + chunk).slice(-256 * 1024);
  });
  const killGroup = (signal) => {
    try {
      process.kill(-child.pid, signal);
    } catch (e) {
      if (e.code !== 'ESRCH') throw e;
    }
  };
  const stop = async () => {
    running.delete(child);
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    killGroup('SIGTERM');
    const timeout = new Promise((resolve) => setTimeout(() => resolve('timeout'), 5000));
    if ((await Promise.race([exited, timeout])) === 'timeout') {
      killGroup('SIGKILL');
      await exited;
    }
    killGroup('SIGKILL'); // anything of the group still left
  };
  return new Promise((resolve, reject) => {
    let out = '';
    let done = false;
    const timer = setTimeout(() => {
      reject(new Error(`wsfan dev printed no ready line within ${READY_TIMEOUT_MS / 1000} s\n` +
        `stdout:\n${out}\nstderr (tail):\n${tail(stackLog)}`));
    }, READY_TIMEOUT_MS);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const ready = READY_LINE.exec(out);
      const envLine = ENV_LINE.exec(out);
      if (ready && envLine && !done) {
        done = true;
        clearTimeout(timer);
        const env = Object.fromEntries(envLine[1].trim().split(/\s+/).map((w) => {
          const i = w.indexOf('=');
          return [w.slice(0, i), w.slice(i + 1)];
        }));
        resolve({ baseUrl: ready[1], wsUrl: ready[2], env, log: () => stackLog, stop });
      }
    });
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('exit', (code, signal) => {
      if (!done) {
        clearTimeout(timer);
        reject(new Error(`wsfan dev exited (code ${code}, signal ${signal}) before it was ready\n` +
          `stdout:\n${out}\nstderr (tail):\n${tail(stackLog)}`));
      }
    });
  });
}
