#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time over its
# committed corpus; exits non-zero if any target crashes, panics, hangs,
# leaks or allocates past the limit.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 30 s, all targets
#
# What it does, so that CI needs nothing else but a nightly toolchain:
# - installs cargo-fuzz if `cargo +nightly fuzz` is missing;
# - builds all targets once, with AddressSanitizer when the nightly has its
#   runtime (no rustup download is needed: it ships with the toolchain),
#   else without a sanitizer (still catching panics, overflow, hangs);
# - runs each target for SECONDS over a scratch corpus directory plus the
#   committed fuzz/corpus/<target> (read only: new inputs go to the scratch
#   directory, which is deleted; the repository is never written);
# - copies crash inputs to fuzz/artifacts/<target>/ (ignored by git) and
#   prints how to replay them.
#
# Environment:
#   FUZZ_TOOLCHAIN     toolchain for cargo fuzz (default: nightly)
#   FUZZ_SANITIZER     address | none | ... (default: address if available)
#   FUZZ_BUILD_ARGS    extra `cargo fuzz build` flags, e.g. "-O" to fuzz
#                      without debug assertions (overflow checks), as shipped
#   FUZZ_JOBS          cargo build jobs (default: all CPUs)
#   FUZZ_NICE          nice level of the build and the runs (default: 0)
# Longer runs and parallel jobs: see RELIABILITY.md.
set -euo pipefail

secs=${1:-30}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
all_targets=(envelope tcp_frame segment ring registry pool_location mesh_helpers)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi
tc=${FUZZ_TOOLCHAIN:-nightly}
nice_level=${FUZZ_NICE:-0}
start=$(date +%s)

if ! cargo "+$tc" fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    # --locked: the versions cargo-fuzz was released with; plain install as
    # a fallback if the lock file no longer resolves.
    cargo install cargo-fuzz --locked || cargo install cargo-fuzz
fi

sysroot=$(rustc "+$tc" --print sysroot)
host=$(rustc "+$tc" -vV | sed -n 's/^host: //p')
if [ -z "${FUZZ_SANITIZER:-}" ]; then
    # ASan needs the sanitizer runtime, which only some nightly component
    # sets ship; rustup cannot fetch it offline, so detect it.
    if ls "$sysroot/lib/rustlib/$host/lib/"*rt.asan.a >/dev/null 2>&1; then
        FUZZ_SANITIZER=address
    else
        echo "fuzz.sh: no ASan runtime in $sysroot; building without a sanitizer"
        FUZZ_SANITIZER=none
    fi
fi

cd "$root"
# shellcheck disable=SC2086 # FUZZ_BUILD_ARGS is a list of flags
CARGO_BUILD_JOBS=${FUZZ_JOBS:-${CARGO_BUILD_JOBS:-$(nproc)}} \
    nice -n "$nice_level" cargo "+$tc" fuzz build -s "$FUZZ_SANITIZER" ${FUZZ_BUILD_ARGS:-}
built=$(date +%s)
bin_dir="$root/fuzz/target/$host/release"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/mb-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# The targets' own scratch files (segments, registry homes) go here too.
export MB_FUZZ_TMP="$scratch/tmp"
mkdir -p "$MB_FUZZ_TMP"

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch/corpus/$t" "$scratch/artifacts"
    log="$scratch/$t.log"
    echo "fuzz.sh: $t for ${secs}s"
    # -timeout: an input that runs 10 s is a hang (the default is 20 min).
    # -malloc_limit_mb: no input may make one allocation of 256 MiB.
    if nice -n "$nice_level" "$bin_dir/$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
        -print_final_stats=1 -artifact_prefix="$scratch/artifacts/$t-" \
        "$scratch/corpus/$t" "$root/fuzz/corpus/$t" >"$log" 2>&1; then
        # "Done N runs in S second(s)" and the final coverage line.
        grep -E '^Done [0-9]+ runs|^#[0-9]+[[:space:]]+DONE' "$log" | sed "s/^/  $t: /" || true
    else
        failed+=("$t")
        echo "fuzz.sh: $t FAILED:"
        # The panic message or sanitizer verdict, then the end of the log
        # (the stack trace).
        grep -m 6 -E 'panicked at|^[a-z ]*overflow|ERROR: |SUMMARY: ' "$log" || true
        echo "fuzz.sh: end of the $t log:"
        tail -n 40 "$log"
        mkdir -p "$root/fuzz/artifacts/$t"
        for a in "$scratch/artifacts/$t-"*; do
            [ -e "$a" ] || continue
            cp "$a" "$root/fuzz/artifacts/$t/"
            echo "fuzz.sh: replay with: cargo +$tc fuzz run $t fuzz/artifacts/$t/$(basename "$a")"
        done
    fi
done

end=$(date +%s)
echo "fuzz.sh: build $((built - start))s, runs $((end - built))s, total $((end - start))s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: failing targets: ${failed[*]}"
    exit 1
fi
