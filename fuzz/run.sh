#!/usr/bin/env bash
# Bounded coverage-guided fuzz run (atheris/libFuzzer) of every harness in fuzz/: each for
# FUZZ_SECONDS (default 20), starting from its seed corpus fuzz/corpus/<target>/ (read
# only: new inputs go to a scratch folder). Exit status 1 when any harness found a crash;
# the reproducer is kept in $FUZZ_OUT/<target>/crashes/ and its traceback printed.
#
#   fuzz/run.sh                       # every target, 20 s each
#   FUZZ_SECONDS=300 fuzz/run.sh yjs  # one target, longer
#   .venv/bin/python fuzz/fuzz_yjs.py CRASH_FILE   # replay a reproducer
#
# Environment: PYTHON (default .venv/bin/python), FUZZ_SECONDS, FUZZ_OUT (default: a
# temporary folder, removed afterwards unless something crashed), FUZZ_JOBS (harnesses run
# at once, default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
SECS=${FUZZ_SECONDS:-20}
JOBS=${FUZZ_JOBS:-1}
ALL=(engineio socketio session events jwt ini sse yjs)
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=("${ALL[@]}")

if ! "$PY" -c "import atheris" 2>/dev/null; then
  echo "atheris is not installed: $PY -m pip install -r fuzz/requirements.txt" >&2
  exit 2
fi

keep=${FUZZ_OUT:+1}
OUT=${FUZZ_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/rt-fuzz.XXXXXX")}
mkdir -p "$OUT"
# The in-process appliances of some harnesses keep a SQLite store that syncs every write:
# on tmpfs when there is one. libFuzzer ends the process without Python's clean-up, so the
# folder is removed here.
if [[ -d /dev/shm && -w /dev/shm ]]; then
  SCRATCH=$(mktemp -d /dev/shm/rt-fuzz.XXXXXX)
else
  SCRATCH="$OUT/scratch"
  mkdir -p "$SCRATCH"
fi
trap 'rm -rf "$SCRATCH"' EXIT

run_one() {
  local t=$1 work="$OUT/$1"
  mkdir -p "$work/corpus" "$work/crashes" "$SCRATCH/$t"
  local args=(-max_total_time="$SECS" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1
              -artifact_prefix="$work/crashes/")
  [[ -f fuzz/dict/$t.dict ]] && args+=(-dict="fuzz/dict/$t.dict")
  if RT_FUZZ_TMP="$SCRATCH/$t" "$PY" "fuzz/fuzz_$t.py" "${args[@]}" "$work/corpus" \
      "fuzz/corpus/$t" >"$work/log" 2>&1; then
    local runs
    runs=$(grep -Eo '^Done [0-9]+ runs in [0-9]+ second' "$work/log" | tail -1 || true)
    echo "fuzz $t: ok (${runs:-no stats}; $(ls "$work/corpus" | wc -l) new corpus inputs)"
    rm -rf "${SCRATCH:?}/$t"
  else
    echo "fuzz $t: FAILED (log $work/log, reproducer in $work/crashes/)"
    grep -A40 -E "Uncaught Python exception|ERROR: libFuzzer" "$work/log" | head -60 || tail -40 "$work/log"
    return 1
  fi
}

status=0
pids=()
for t in "${TARGETS[@]}"; do
  [[ -f fuzz/fuzz_$t.py ]] || { echo "no harness fuzz/fuzz_$t.py" >&2; exit 2; }
  run_one "$t" &
  pids+=($!)
  if ((${#pids[@]} >= JOBS)); then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

if ((status == 0)) && [[ -z $keep ]]; then
  rm -rf "$OUT"
else
  echo "fuzz output kept in $OUT"
fi
exit $status
