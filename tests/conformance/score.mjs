#!/usr/bin/env node
// Score an http-cache-tests (npm, 0.4.5) results file with the suite's own
// `determineTestResult` from lib/display.mjs.
//
// Usage:
//   node score.mjs SUITE_DIR RESULTS_JSON [--baseline N] [--by-suite] [--all-failures]
//   node score.mjs SUITE_DIR --list          # list every test (kind, id, name), no results needed
//
// SUITE_DIR is the unpacked npm package (the folder holding cli.mjs, lib/, tests/).
// RESULTS_JSON is the JSON that `npm run --silent cli --base=...` prints.
//
// Output (stdout):
//   required: P/T passed            (T = required tests the CLI runs, i.e. not browser_only)
//   optional: P/T passed            (kind "optimal")
//   checks: Y yes, N no (of T)      (kind "check": informational, no right answer)
//   required-score: P               (machine-readable, used by the ratchet)
//   FAIL <result> <id> :: <name>    (one line per required test that did not pass)
//
// <result> is the suite's own classification: fail, dependency_fail (a test it
// depends on did not pass), setup_fail, retry, harness_fail, untested.
//
// Exit status: 0, or 1 when --baseline N is given and the required score is below N,
// or 2 on a usage / input error.

import fs from 'fs'
import path from 'path'
import process from 'process'
import { pathToFileURL } from 'url'

function usage (msg) {
  if (msg) console.error(`score.mjs: ${msg}`)
  console.error('usage: node score.mjs SUITE_DIR RESULTS_JSON [--baseline N] [--by-suite] [--all-failures]')
  console.error('       node score.mjs SUITE_DIR --list')
  process.exit(2)
}

const args = process.argv.slice(2)
const positional = []
let baseline = null
let bySuite = false
let allFailures = false
let list = false
for (let i = 0; i < args.length; i++) {
  const a = args[i]
  if (a === '--baseline') {
    const v = args[++i]
    if (v === undefined || !/^\d+$/.test(v.trim())) usage(`--baseline needs an integer, got ${v}`)
    baseline = parseInt(v.trim(), 10)
  } else if (a === '--by-suite') {
    bySuite = true
  } else if (a === '--all-failures') {
    allFailures = true
  } else if (a === '--list') {
    list = true
  } else if (a.startsWith('--')) {
    usage(`unknown option ${a}`)
  } else {
    positional.push(a)
  }
}
if (positional.length !== (list ? 1 : 2)) usage()

const suiteDir = path.resolve(positional[0])
for (const f of ['lib/display.mjs', 'tests/index.mjs', 'tests/surrogate-control.mjs']) {
  if (!fs.existsSync(path.join(suiteDir, f))) usage(`${suiteDir} does not look like http-cache-tests (missing ${f})`)
}
const load = f => import(pathToFileURL(path.join(suiteDir, f)).href)

// resolve the results path against the caller's cwd before leaving it
const resultsPath = list ? null : path.resolve(positional[1])
// display.mjs builds a Liquid engine rooted at 'lib/tpl' on import; run from the suite dir
// like cli.mjs does.
process.chdir(suiteDir)
const display = await load('lib/display.mjs')
// Same test list as cli.mjs: tests/index.mjs plus the surrogate-control suite.
const suites = [...(await load('tests/index.mjs')).default, (await load('tests/surrogate-control.mjs')).default]

const kindOf = t => t.kind || 'required'
// The CLI (non-browser) runner skips browser_only tests; they are never in the results.
const runByCli = t => t.browser_only !== true

if (list) {
  for (const s of suites) {
    for (const t of s.tests) {
      const flags = [t.browser_only ? 'browser_only' : '', t.browser_skip ? 'browser_skip' : ''].filter(Boolean)
      const dep = t.depends_on ? ` depends_on=${t.depends_on.join(',')}` : ''
      console.log(`${kindOf(t).padEnd(8)} ${s.id.padEnd(18)} ${t.id}${flags.length ? ' [' + flags.join(',') + ']' : ''}${dep} :: ${t.name}`)
    }
  }
  process.exit(0)
}

let results
try {
  results = JSON.parse(fs.readFileSync(resultsPath, 'utf8'))
} catch (e) {
  usage(`cannot read results ${resultsPath}: ${e.message}`)
}
if (results === null || typeof results !== 'object' || Array.isArray(results) || Object.keys(results).length === 0) {
  usage(`${resultsPath} holds no test results`)
}

// Map the suite's symbol arrays back to names.
const symbolName = new Map([
  ['✅', 'pass'], ['⛔️', 'fail'], ['⚠️', 'optional_fail'], ['Y', 'yes'], ['N', 'no'],
  ['🔹', 'setup_fail'], ['⁉️', 'harness_fail'], ['⚪️', 'dependency_fail'], ['↻', 'retry'], ['-', 'untested']
])
const classify = id => {
  const r = display.determineTestResult(suites, id, results)
  return symbolName.get(r[2]) || `unknown(${r[2]})`
}

const tally = { required: { pass: 0, total: 0 }, optimal: { pass: 0, total: 0 }, check: { yes: 0, no: 0, other: 0, total: 0 } }
const byClass = { required: {}, optimal: {}, check: {} }
const perSuite = []
const failures = []
const optionalFailures = []
for (const s of suites) {
  const ps = { id: s.id, pass: 0, total: 0 }
  for (const t of s.tests) {
    if (!runByCli(t)) continue
    const kind = kindOf(t)
    const c = classify(t.id)
    byClass[kind][c] = (byClass[kind][c] || 0) + 1
    if (kind === 'required') {
      tally.required.total++
      ps.total++
      if (c === 'pass') { tally.required.pass++; ps.pass++ } else failures.push({ c, t })
    } else if (kind === 'optimal') {
      tally.optimal.total++
      if (c === 'pass') tally.optimal.pass++; else optionalFailures.push({ c, t })
    } else {
      tally.check.total++
      if (c === 'yes') tally.check.yes++; else if (c === 'no') tally.check.no++; else tally.check.other++
    }
  }
  perSuite.push(ps)
}

const known = new Set(suites.flatMap(s => s.tests.map(t => t.id)))
const unknown = Object.keys(results).filter(id => !known.has(id))

const fmt = o => Object.entries(o).map(([k, v]) => `${k}=${v}`).join(' ')
console.log(`required: ${tally.required.pass}/${tally.required.total} passed (${fmt(byClass.required)})`)
console.log(`optional: ${tally.optimal.pass}/${tally.optimal.total} passed (${fmt(byClass.optimal)})`)
console.log(`checks: ${tally.check.yes} yes, ${tally.check.no} no${tally.check.other ? `, ${tally.check.other} other` : ''} (of ${tally.check.total})`)
if (unknown.length) console.log(`note: ${unknown.length} result ids unknown to this suite version: ${unknown.join(' ')}`)
if (bySuite) {
  for (const ps of perSuite) if (ps.total) console.log(`  suite ${ps.id.padEnd(18)} required ${ps.pass}/${ps.total}`)
}
console.log(`required-score: ${tally.required.pass}`)
for (const { c, t } of failures) {
  const detail = Array.isArray(results[t.id]) ? ` [${results[t.id].join(': ')}]` : ''
  console.log(`FAIL ${c} ${t.id} :: ${t.name}${detail}`)
}
if (allFailures) {
  for (const { c, t } of optionalFailures) {
    const detail = Array.isArray(results[t.id]) ? ` [${results[t.id].join(': ')}]` : ''
    console.log(`OPTIONAL ${c} ${t.id} :: ${t.name}${detail}`)
  }
}

if (baseline !== null) {
  if (tally.required.pass < baseline) {
    console.log(`RATCHET FAILED: required score ${tally.required.pass} is below the baseline ${baseline}`)
    process.exit(1)
  } else if (tally.required.pass > baseline) {
    console.log(`ratchet: required score ${tally.required.pass} beats the baseline ${baseline}; raise tests/conformance/baseline.txt to ${tally.required.pass}`)
  } else {
    console.log(`ratchet: required score ${tally.required.pass} equals the baseline ${baseline}`)
  }
}
