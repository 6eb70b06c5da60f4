// Type-checks a Grafana dashboard JSON file against Grafana's own dashboard
// schema: the `Dashboard` type of @grafana/schema, which Grafana generates from
// the CUE kinds it validates dashboards with. The JSON is checked as an object
// literal, so misspelt or unknown keys, wrong value types and missing required
// fields are all errors.
//
//   node tests/grafana/check.mjs deploy/monitoring/grafana-dashboard.json
//
// Prints each error with its line in the JSON file; exits 1 on any.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const here = path.dirname(fileURLToPath(import.meta.url));
const jsonPath = process.argv[2];
if (!jsonPath) {
  console.error('usage: node check.mjs DASHBOARD.json');
  process.exit(2);
}
const json = fs.readFileSync(jsonPath, 'utf8');
JSON.parse(json); // plain JSON first: a syntax error is reported as such

// A source file that exists only in memory, placed here so that the import
// resolves in this directory's node_modules.
const prologue = "import type { Dashboard } from '@grafana/schema';\nexport const dashboard: Dashboard = ";
const virtualFile = path.join(here, '__dashboard_check__.ts');
const source = `${prologue}${json};\n`;
const options = {
  strict: true,
  noEmit: true,
  skipLibCheck: true,
  target: ts.ScriptTarget.ES2020,
  module: ts.ModuleKind.ESNext,
  moduleResolution: ts.ModuleResolutionKind.Bundler,
};
const host = ts.createCompilerHost(options);
const readFile = host.readFile.bind(host);
const fileExists = host.fileExists.bind(host);
const getSourceFile = host.getSourceFile.bind(host);
host.readFile = (f) => (f === virtualFile ? source : readFile(f));
host.fileExists = (f) => f === virtualFile || fileExists(f);
host.getSourceFile = (f, lang, ...rest) =>
  f === virtualFile ? ts.createSourceFile(f, source, lang) : getSourceFile(f, lang, ...rest);

const program = ts.createProgram([virtualFile], options, host);
const diagnostics = ts.getPreEmitDiagnostics(program);
const prologueLines = prologue.split('\n').length - 1;
for (const d of diagnostics) {
  const message = ts.flattenDiagnosticMessageText(d.messageText, '\n  ');
  if (d.file && d.start !== undefined) {
    const { line } = d.file.getLineAndCharacterOfPosition(d.start);
    console.log(`${jsonPath}:${line - prologueLines + 1}: ${message}`);
  } else {
    console.log(`${jsonPath}: ${message}`);
  }
}
if (diagnostics.length > 0) process.exit(1);
console.log(`${jsonPath}: matches Grafana's Dashboard schema (@grafana/schema ${JSON.parse(fs.readFileSync(path.join(here, 'node_modules/@grafana/schema/package.json'), 'utf8')).version})`);
