#!/usr/bin/env bash
# bench/ab.sh COMMIT... : bench/ab.py for each commit and for the working tree, interleaved
# (ROUNDS times, default 2), on the services `make services` started. Each commit runs from
# a git worktree under /tmp, imported ahead of the editable install through PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
for commit in "$@"; do
  tree=/tmp/headwater-ab-$commit
  [ -d "$tree" ] || git worktree add -f --detach "$tree" "$commit" >/dev/null
  mkdir -p "$tree.path/headwater"
  for d in runner bridges schemas; do ln -sfn "$tree/$d" "$tree.path/headwater/$d"; done
done
for _ in $(seq "${ROUNDS:-2}"); do
  for commit in "$@"; do
    tree=/tmp/headwater-ab-$commit
    (cd "$tree" && PYTHONPATH="$tree.path:$tree" "$root/.venv/bin/python" "$root/bench/ab.py" "$commit" 2>/dev/null | tail -1)
  done
  PYTHONPATH="$root" .venv/bin/python -m bench.ab work 2>/dev/null | tail -1
done
