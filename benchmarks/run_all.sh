#!/usr/bin/env bash
# Every benchmark, one after another (they share the machine's cores: never run two at once).
# Results: benchmarks/results/<name>.json and <name>.md. Needs the bench extra (TRL).
set -euo pipefail
cd "$(dirname "$0")/.."
for b in generation sl_cai judge train rl online_dpo serve; do
  echo "== bench $b"
  .venv/bin/cai-ray bench "$b" "$@"
done
