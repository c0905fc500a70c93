// Parses and validates an AsyncAPI document with the official parser
// (@asyncapi/parser, pinned in package.json beside this file), resolving the
// document's $refs to local files. Any diagnostic of severity error or
// warning fails. Usage: node asyncapi.cjs NODE_MODULES_DIR FILE
"use strict";
const path = require("node:path");

async function main() {
  const [modules, file] = process.argv.slice(2);
  const { Parser, fromFile } = require(path.join(modules, "@asyncapi/parser"));
  const { diagnostics, document } = await fromFile(new Parser(), path.resolve(file)).parse();
  // Spectral severities: 0 error, 1 warning, 2 information, 3 hint.
  const problems = diagnostics.filter((d) => d.severity <= 1);
  for (const d of diagnostics) {
    const where = d.path.join(".") || "(document)";
    console.log(`${["error", "warning", "info", "hint"][d.severity]} ${d.code} at ${where}: ${d.message}`);
  }
  if (!document || problems.length > 0) {
    process.exit(1);
  }
  const channels = document.channels().all().map((c) => c.address());
  const messages = document.messages().all().map((m) => m.name());
  console.log(`AsyncAPI ${document.version()}: channels ${channels.join(", ")}; messages ${messages.join(", ")}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
