#!/bin/sh
# Installs node_modules with `npm ci` unless playwright-core is already at the version
# package-lock.json pins. Test processes start together on a fresh clone and `npm ci` begins by
# deleting node_modules, so the check and the install run under one lock.
set -e
cd "$(dirname "$0")"
exec 9>.install.lock
flock 9
node -e '
  const r = (p) => require("./" + p);
  const pinned = r("package-lock.json").packages["node_modules/playwright-core"].version;
  let installed;
  try { installed = r("node_modules/playwright-core/package.json").version; } catch {}
  process.exit(installed === pinned ? 0 : 1);
' && exit 0
npm ci --no-audit --no-fund
