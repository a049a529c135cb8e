#!/usr/bin/env bash
# Builds the emitter's stress driver with AddressSanitizer + UndefinedBehaviorSanitizer
# and runs it; then, when valgrind is installed, runs a smaller size under memcheck.
# usage: tests/c/run_sanitizers.sh [records-per-scenario]   (needs root and kernel audit)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../../csrc" && pwd)
n=${1:-20000}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cc=${CC:-gcc}
flags=(-std=gnu99 -Wall -Wextra -Werror -g -I"$src")

"$cc" "${flags[@]}" -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
    "$here/stress_emitter.c" "$src/kensa_audit.c" -o "$out/stress_asan" -ldl -lpthread
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$out/stress_asan" "$n"

if command -v valgrind >/dev/null; then
    "$cc" "${flags[@]}" -O0 "$here/stress_emitter.c" "$src/kensa_audit.c" -o "$out/stress_plain" -ldl -lpthread
    # Forked children keep a copy of the parent's thread stacks: "possibly lost" there is expected.
    valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-possibly-lost=no \
        --trace-children=no "$out/stress_plain" $((n / 10))
fi
echo "sanitizers: clean"
