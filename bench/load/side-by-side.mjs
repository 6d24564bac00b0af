// The table of a side-by-side run (aggregate.sh, redis.sh): one row per scenario and target, medians over rounds.
//   node side-by-side.mjs RESULTS.jsonl
import { readFileSync } from 'node:fs';

const rows = readFileSync(process.argv[2], 'utf8').trim().split('\n').map((line) => JSON.parse(line));
const groups = new Map();
for (const r of rows) {
  const key = `${r.scenario}|${r.target}`;
  if (!groups.has(key)) groups.set(key, []);
  groups.get(key).push(r);
}
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
console.log('| scenario | target | calls/s (median) | p50 ms | p99 ms | gateway CPU µs/call | errors |');
console.log('|---|---|---|---|---|---|---|');
for (const [key, rs] of [...groups].sort()) {
  const [scenario, target] = key.split('|');
  const get = (f) => median(rs.map(f));
  const errors = rs.reduce((a, r) => a + r.rateLimited + r.rpcErrors + r.httpErrors + r.failed + r.shed, 0);
  console.log(`| ${scenario} | ${target} | ${Math.round(get((r) => r.callsPerSec))} | ${get((r) => r.p50Ms).toFixed(3)} | ${get((r) => r.p99Ms).toFixed(3)} | ${get((r) => r.cpuUsPerCall).toFixed(1)} | ${errors} |`);
}
