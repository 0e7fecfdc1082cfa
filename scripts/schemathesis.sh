#!/usr/bin/env bash
# The schemathesis conformance run, in one place (docs/api.md, "API conformance").
#
#   scripts/schemathesis.sh install          create the virtualenv if missing (pinned version)
#   scripts/schemathesis.sh run URL TOKEN    fuzz URL/api-docs/openapi.json with every check
#
# The virtualenv and the run's working directory live under target/ (CARGO_TARGET_DIR if set),
# so `cargo clean` removes them and nothing lands in the work tree. The test suite
# (tests/api/conformance.rs) calls `run`; to re-run by hand against a running service, register
# a user for a token, then:
#   scripts/schemathesis.sh run http://127.0.0.1:8787 "$TOKEN"
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
# Every package of the virtualenv pinned (pip freeze of a working install), so that a run
# today and one next month generate the same requests from the same seed.
REQUIREMENTS=scripts/schemathesis-requirements.txt
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
case "$TARGET" in /*) ;; *) TARGET=$PWD/$TARGET ;; esac   # the run changes directory
VENV="$TARGET/schemathesis-venv"
ST="$VENV/bin/st"
# Bounds keep the run at about three minutes on a 2-core machine. One worker: with two, Python
# 3.11's ast module (used by hypothesis to describe filters) fails with "AST constructor
# recursion depth mismatch" in one of the threads.
MAX_EXAMPLES=${ST_MAX_EXAMPLES:-60}
MAX_TIME=${ST_MAX_TIME:-170}
SEED=${ST_SEED:-1}

installed() { [ -x "$ST" ] && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('schemathesis') != '$VERSION')" 2>/dev/null; }

case "${1:-}" in
  install)
    if installed; then exit 0; fi
    echo "schemathesis: installing $VERSION into $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    ;;
  run)
    url=${2:?usage: $0 run URL TOKEN}
    token=${3:?usage: $0 run URL TOKEN}
    if ! installed; then
      echo "schemathesis $VERSION is not installed; run: scripts/schemathesis.sh install" >&2
      exit 3
    fi
    # Hooks: serializers for the audio upload's media types (see the file).
    export SCHEMATHESIS_HOOKS=$PWD/scripts/schemathesis_hooks.py
    CONFIG=$PWD/scripts/schemathesis.toml
    # schemathesis writes its state (.schemathesis/) into the working directory even with its
    # cache off: run it from under target/, so that nothing lands in the work tree.
    mkdir -p "$TARGET/schemathesis-run"
    cd "$TARGET/schemathesis-run"
    exec "$ST" --config-file "$CONFIG" run "$url/api-docs/openapi.json" \
      --url "$url" \
      --checks all \
      --header "Authorization: Bearer $token" \
      --max-examples "$MAX_EXAMPLES" \
      --max-time "$MAX_TIME" \
      --max-failures 50 \
      --seed "$SEED" \
      --no-color \
      --workers 1
    ;;
  *)
    echo "usage: $0 install | run URL TOKEN" >&2
    exit 2
    ;;
esac
