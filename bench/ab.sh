#!/bin/bash
# Speed of two commits, alternated: the shared 2-core machines this project runs on move
# wall-clock figures by up to 2x between runs, so a before/after is only worth reading when
# the two versions take turns.
#
#   bash bench/ab.sh OLD_REV [MODELS] [REPEAT] [ROUNDS]
#   bash bench/ab.sh e786382 llama2,convnet8,encoder6,encoder24 3 2
#
# OLD_REV is checked out in a temporary worktree; the new version is this checkout. Both run
# bench/bench_speed.py --no-memory with this checkout's Python (.venv), each importing its own
# padiff (bench/pairs.py puts its checkout first on sys.path).
set -euo pipefail
old=${1:?usage: bash bench/ab.sh OLD_REV [MODELS] [REPEAT] [ROUNDS]}
models=${2:-llama2,convnet8,encoder6,encoder24}
repeat=${3:-3}
rounds=${4:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
tree=$(mktemp -d /tmp/padiff-ab-XXXXXX)
trap 'git -C "$here" worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"' EXIT
git -C "$here" worktree add --detach "$tree" "$old" >/dev/null
for round in $(seq "$rounds"); do
  for side in old new; do
    dir=$here; [ "$side" = old ] && dir=$tree
    echo "== $side ($(git -C "$dir" rev-parse --short HEAD)), round $round"
    (cd "$dir" && "$python" bench/bench_speed.py --models "$models" --no-memory --repeat "$repeat" 2>/dev/null \
      | grep -E '^(model|[a-z]+[0-9]+n? )')
  done
done
