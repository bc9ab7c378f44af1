#!/usr/bin/env bash
# Fuzz the live HTTP API with schemathesis for a bounded time (docs/service.md, "Fuzzing").
#
#   bench/fuzz_api.sh [SECONDS [ST_ARGS...]]   # default 600 s; e.g. 300 --phases fuzzing,stateful
#
# Starts `python -m service` on 127.0.0.1 (a free port, a temporary data dir, an API key), creates
# one collection so that the {name} routes meet a real one too, then runs schemathesis over every
# operation of /openapi.json with the four checks the service promises to pass: no server error,
# only documented statuses, documented content types, bodies that match their schema. Prints
# schemathesis's summary and every unhandled error the server logged; exits non-zero if either
# found anything. Needs the `fuzz` extra (pip install -e '.[fuzz]'); not run in CI (it takes
# minutes and a whole core). Set MONOLITH_LOAD_TEXT_MODEL=false to fuzz without the text model.
# Traffic goes to 127.0.0.1 only.
set -euo pipefail

seconds="${1:-600}"
here="$(cd "$(dirname "$0")/.." && pwd)"
command -v st >/dev/null || { echo "schemathesis is not installed: pip install -e '.[fuzz]'" >&2; exit 2; }

tmp="$(mktemp -d)"
port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:${port}"
key="fuzz-$(python -c 'import secrets; print(secrets.token_hex(8))')"
log="$tmp/server.log"

cd "$here"
MONOLITH_API_KEY="$key" MONOLITH_DATA_DIR="$tmp/data" \
  MONOLITH_LOAD_TEXT_MODEL="${MONOLITH_LOAD_TEXT_MODEL:-true}" \
  python -m service --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

for _ in $(seq 1 300); do
  if curl -fs "$url/readyz" >/dev/null 2>&1; then break; fi
  kill -0 "$server" 2>/dev/null || { echo "the server exited:" >&2; tail -n 40 "$log" >&2; exit 1; }
  sleep 0.5
done
curl -fs "$url/readyz" >/dev/null || { echo "the server did not become ready" >&2; tail -n 40 "$log" >&2; exit 1; }
curl -fs -X PUT -H "Authorization: Bearer $key" "$url/collections/fuzz" >/dev/null

echo "fuzzing $url for ${seconds} s (server log: $log)" >&2
status=0
SCHEMATHESIS_HOOKS=fuzz_hooks PYTHONPATH="$here/bench${PYTHONPATH:+:$PYTHONPATH}" st run "$url/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-time "$seconds" --workers 2 --request-timeout 120 --continue-on-failure \
  --suppress-health-check all "${@:2}" || status=$?

errors="$(grep -c -E 'unhandled error|Exception in ASGI application|Traceback' "$log" || true)"
if [ "$errors" != "0" ]; then
  echo "the server logged $errors unhandled errors:" >&2
  grep -A 30 -E 'unhandled error|Exception in ASGI application' "$log" | head -n 200 >&2
  status=1
fi
exit "$status"
