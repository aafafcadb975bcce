#!/usr/bin/env bash
# make bench-cpu: the handlers' CPU per request, without I/O (the in-memory World of
# shared/api/tests/support). Three measurements of the same hot paths, one table:
#   1. criterion (shared/api/benches/handlers.rs, shared/domain/benches/crypto.rs): the mean, and
#      the p99 of its samples (each sample is the mean of a batch of iterations);
#   2. the release build of shared/api/examples/hot_paths.rs timing each single operation
#      (TIMED_N of them): the p99 of operations;
#   3. the same binary under callgrind with N = 0 and N = CALLGRIND_N operations:
#      instructions per operation = (Ir(N) - Ir(0)) / N, stable on a noisy machine.
# Usage: scripts/bench_cpu.sh [REGEX]   (REGEX selects paths, e.g. 'lambda/|crypto/verify')
# Settings: BENCH_WARM_UP (s, 1), BENCH_MEASUREMENT (s, 3), CALLGRIND_N (10000), TIMED_N (10000).
set -euo pipefail
cd "$(dirname "$0")/.."

WARM_UP="${BENCH_WARM_UP:-1}"
MEASUREMENT="${BENCH_MEASUREMENT:-3}"
CALLGRIND_N="${CALLGRIND_N:-10000}"
TIMED_N="${TIMED_N:-10000}"
FILTER="${1:-.}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Wherever cargo puts things (CARGO_TARGET_DIR, .cargo/config), not a fixed path.
TARGET="$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
OUT="$TARGET/bench-cpu"
mkdir -p "$OUT"

log "criterion: warm-up ${WARM_UP}s, measurement ${MEASUREMENT}s per path"
cargo bench -p twochan-domain --bench crypto -- \
  --warm-up-time "$WARM_UP" --measurement-time "$MEASUREMENT" "$FILTER"
cargo bench -p twochan-api --bench handlers -- \
  --warm-up-time "$WARM_UP" --measurement-time "$MEASUREMENT" "$FILTER"

log "release build of the hot-path driver (shared/api/examples/hot_paths.rs)"
cargo build --release -p twochan-api --example hot_paths
BIN="$TARGET/release/examples/hot_paths"
mapfile -t PATHS < <("$BIN" list | grep -E -- "$FILTER")

log "single operations timed, $TIMED_N per path"
: > "$OUT/timed.txt"
for path in "${PATHS[@]}"; do
  "$BIN" "$path" "$TIMED_N" --timed | tee -a "$OUT/timed.txt"
done

: > "$OUT/instructions.txt"
if command -v valgrind >/dev/null; then
  log "callgrind: N = 0 and N = $CALLGRIND_N per path ($(valgrind --version))"
  for path in "${PATHS[@]}"; do
    file="$OUT/callgrind.${path//\//.}"
    for n in 0 "$CALLGRIND_N"; do
      valgrind --tool=callgrind --callgrind-out-file="$file.$n.out" "$BIN" "$path" "$n" \
        2> "$file.$n.log"
    done
    ir0="$(sed -n 's/^summary: //p' "$file.0.out")"
    irn="$(sed -n 's/^summary: //p' "$file.$CALLGRIND_N.out")"
    echo "$path $(((irn - ir0) / CALLGRIND_N))" | tee -a "$OUT/instructions.txt"
  done
else
  log "valgrind not found: no instruction counts (apt-get install valgrind)"
fi

log "table (also in $OUT/table.md)"
python3 - "$TARGET" "$OUT" "${PATHS[@]}" <<'EOF' | tee "$OUT/table.md"
import json, math, os, sys

target, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]

def criterion(path):
    """Mean (ns) and p99 (ns) of the per-iteration means of criterion's samples."""
    base = os.path.join(target, "criterion", *path.split("/", 1), "new")
    try:
        mean = json.load(open(os.path.join(base, "estimates.json")))["mean"]["point_estimate"]
        sample = json.load(open(os.path.join(base, "sample.json")))
    except FileNotFoundError:
        return None, None
    per_iter = sorted(t / i for t, i in zip(sample["times"], sample["iters"]))
    p99 = per_iter[min(len(per_iter), math.ceil(0.99 * len(per_iter))) - 1]
    return mean, p99

def table(name):
    rows = {}
    with open(os.path.join(out, name)) as f:
        for line in f:
            fields = line.split()
            if fields:
                rows[fields[0]] = fields[1:]
    return rows

timed = {p: dict(kv.split("=") for kv in f[1:]) for p, f in table("timed.txt").items()}
instructions = table("instructions.txt")

def us(ns):
    return "-" if ns is None else (f"{ns / 1000:.3f}" if ns < 100_000 else f"{ns / 1000:.1f}")

print("| path | mean µs | p99 µs (criterion samples) | p99 µs (single ops) | instructions/op |")
print("| --- | ---: | ---: | ---: | ---: |")
for p in paths:
    mean, p99 = criterion(p)
    single = timed.get(p, {}).get("p99_us", "-")
    ir = instructions.get(p, ["-"])[0]
    ir = f"{int(ir):,}" if ir != "-" else ir
    print(f"| {p} | {us(mean)} | {us(p99)} | {single} | {ir} |")
EOF
