#!/usr/bin/env bash
# Lint (CodeNarc via npm-groovy-lint) and compile-check (Groovy 4.0.26, QuPath 0.6's own version)
# the QuPath scripts in this folder. Needs node/npm and Java 17+ on PATH; installs npm-groovy-lint
# into groovy/.npm (ignored by git) on first use. Exit code non-zero on any lint warning or
# compile error.  Usage: groovy/check.sh [FILE.groovy...]   (default: every script here)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
# 16.2.0: the last release that runs on Node 20 (17+ need Node 22); ships Groovy 4.0.26 + CodeNarc 3.7.0
NGL_VERSION="${NGL_VERSION:-16.2.0}"
PREFIX="$HERE/.npm"
NGL="$PREFIX/node_modules/.bin/npm-groovy-lint"
LIB="$PREFIX/node_modules/npm-groovy-lint/lib/java"

if [ ! -x "$NGL" ] || ! grep -q "\"version\": \"$NGL_VERSION\"" "$PREFIX/node_modules/npm-groovy-lint/package.json" 2>/dev/null; then
    echo "== installing npm-groovy-lint@$NGL_VERSION into $PREFIX"
    mkdir -p "$PREFIX"
    npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error "npm-groovy-lint@$NGL_VERSION"
fi

if [ "$#" -gt 0 ]; then
    FILES=("$@")
else
    FILES=(*.groovy tools/*.groovy)
fi

GROOVY_JAR="$(ls "$LIB"/groovy/lib/groovy-4.*.jar | grep -E '/groovy-4\.[0-9.]+\.jar$' | head -1)"
SLF4J_JAR="$(ls "$LIB"/slf4j-api-*.jar | head -1)"
echo "== compile check with $(basename "$GROOVY_JAR") (QuPath classes as placeholders)"
# Groovy core only (QuPath does not ship groovy-json, so scripts must not use it)
java -cp "$GROOVY_JAR:$SLF4J_JAR" groovy.ui.GroovyMain "$HERE/tools/compile_check.groovy" "${FILES[@]}"

echo "== lint with CodeNarc (npm-groovy-lint $NGL_VERSION, rules: .groovylintrc.json)"
"$NGL" --noserver --failon warning --config "$HERE/.groovylintrc.json" --output txt "${FILES[@]}"
echo "== groovy checks passed"
