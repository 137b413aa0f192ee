#!/usr/bin/env bash
# The wgpu tests and benchmarks on a machine with a real GPU, run from binaries built on another
# machine. `scripts/gpu_check.sh pack DIR NAME...` (here, after `cargo test --no-run`) strips and
# compresses the named binaries into DIR: test binaries by their file's name under tests/
# (`kernels`, `mimi_parity`, ...), examples by theirs (`bench_step`, ...), and `kokichi`.
# `scripts/gpu_check.sh run DIR [speed|checks|all]` (there, in a copy of this checkout, as root,
# with a Vulkan loader and the GPU's Vulkan driver installed) runs what DIR holds on wgpu alone,
# timings first, each part under its own time limit, and prints what each said and how long it
# took. `lighten` and `restore` make room in the tree that travels (below). Each binary is 45-80 MB stripped
# (8-14 MB compressed), so a size limit on what travels may take several bundles.
#
# The test binaries carry this checkout's path (CARGO_MANIFEST_DIR) and the kokichi binary's path
# (CARGO_BIN_EXE_kokichi); `run` links both to the copy it runs in.
set -uo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}

pack() {
    local dir=$1 name f
    shift
    mkdir -p "$dir"
    for name in "$@"; do
        if [ "$name" = kokichi ]; then
            f=$TARGET/debug/kokichi
        elif [ -f "tests/$name.rs" ]; then
            # The newest build of the test binary (deps/NAME-HASH, executable, no extension).
            f=$(find "$TARGET/debug/deps" -maxdepth 1 -type f -executable -name "$name-*" ! -name '*.*' \
                -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)
        else
            f=$TARGET/debug/examples/$name
        fi
        [ -n "$f" ] && [ -x "$f" ] || { echo "no binary for $name under $TARGET (cargo test --no-run)" >&2; exit 1; }
        strip -o "$dir/$name" "$f" && xz -9 -T2 -f "$dir/$name" || exit 1
    done
    pwd > "$dir/source_dir"
    echo "$TARGET" > "$dir/target_dir"
    ls -l "$dir"
}

step() {
    local limit=$1 name=$2
    shift 2
    [ -x "$1" ] || return 0
    local t0=$SECONDS
    echo "== $name: ${*#"$b/"}"
    timeout "$limit" "$@" 2>&1
    local rc=$?
    echo "== $name: rc=$rc after $((SECONDS - t0)) s"
}

run() {
    local dir=$1 what=${2:-all} f src target
    b=$(mktemp -d)
    for f in "$dir"/*.xz; do
        local out=$b/$(basename "$f" .xz)
        xz -dc "$f" >"$out" 2>/dev/null ||
            python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "$out"
        chmod +x "$out"
    done
    src=$(cat "$dir/source_dir")
    target=$(cat "$dir/target_dir")
    if [ "$src" != "$PWD" ] && [ ! -e "$src" ]; then
        mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"
    fi
    if [ -x "$b/kokichi" ]; then mkdir -p "$target/debug" && cp "$b/kokichi" "$target/debug/kokichi"; fi
    # On a machine without a Vulkan loader, the loader and the libraries the binaries link, from
    # the .deb files the device tool's notes have carried in .gl/; and NVIDIA's Vulkan driver
    # where that machine keeps it.
    if ! ldconfig -p | grep -q 'libvulkan\.so\.1' && compgen -G ".gl/*.deb" >/dev/null; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [ -f "$icd" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then export VK_DRIVER_FILES=$icd; fi
    export KOKICHI_TEST_BACKENDS=wgpu KOKICHI_ASSETS=$PWD/assets XDG_RUNTIME_DIR=/tmp/kokichi-xdg
    mkdir -p -m 700 "$XDG_RUNTIME_DIR"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    case "$what" in
    speed) speed ;;
    checks) checks ;;
    *) speed && checks ;;
    esac
}

# Memory bandwidth of the card, for the weight-bandwidth floor bench_step prints (GB/s).
peak_gbs() {
    case "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)" in
    *H200*) echo 4800 ;;
    *H100*PCIe*) echo 2000 ;;
    *H100*) echo 3350 ;;
    *A100*) echo 2039 ;;
    *) echo 1000 ;;
    esac
}

# Timings first, most wanted first: the moshiko-size step (random weights) in f16 with the step
# kernels and then with their plain-Burn references, then in 8 bits; then kokichi-tiny.
speed() {
    local peak
    peak=$(peak_gbs)
    step 300 "moshiko-size step, f16, kernels then references" "$b/bench_step" --backends wgpu --shapes moshiko \
        --dtype f16 --steps 40 --fused both --peak-gbs "$peak" --kernels 12
    step 240 "moshiko-size step, q8" "$b/bench_step" --backends wgpu --shapes moshiko --dtype q8 --steps 40 \
        --peak-gbs "$peak"
    if [ -d assets/kokichi-tiny ]; then
        step 120 "kokichi-tiny step, f32" "$b/bench_step" --backends cpu,wgpu --model kokichi-tiny --fused both
        step 120 "kokichi-tiny step, f16" "$b/bench_step" --backends wgpu --model kokichi-tiny --dtype f16
    fi
    step 60 "kernels against their references" "$b/bench_kernels" --iters 200 --dims 4096 \
        --matvec 1024x1024,4096x4096,4096x12288,4096x22528,11264x4096
}

checks() {
    step 120 kernels "$b/kernels" --test-threads=1
    step 240 step_kernels "$b/step_kernels" --test-threads=1
    step 240 fused_step "$b/fused_step" --test-threads=1
    step 120 q8 "$b/q8" --test-threads=1 --skip moshiko
    step 60 "kernels against their references" "$b/bench_kernels"
    step 240 mimi_parity "$b/mimi_parity" --test-threads=4
    step 240 lm_parity "$b/lm_parity" --test-threads=4
    # The binary's own run needs the kokichi binary, which may travel in another bundle.
    if [ -x "$b/kokichi" ]; then
        step 240 e2e_run "$b/e2e_run" --test-threads=2
    else
        step 240 e2e_run "$b/e2e_run" --exact library_matches_reference
    fi
    if [ -x "$b/kokichi" ] && [ -d assets/kokichi-tiny ]; then
        local dtype ex
        for dtype in f32 f16; do
            for ex in assets/examples/*.wav; do
                step 120 "kokichi-tiny $dtype, $(basename "$ex")" "$b/kokichi" --backend wgpu --dtype "$dtype" run \
                    --model kokichi-tiny --greedy --input "$ex" --output /tmp/answer.wav --transcript /tmp/answer.txt
                echo "   answer: \"$(cat /tmp/answer.txt 2>/dev/null)\""
            done
        done
    fi
}

# The tracked tree is about 66 MB of the 64 MiB (67.1 MB) that travels to the device machine, so
# binaries fit only with the training stages (29 MB) left behind: `lighten [PATH...]` untracks
# PATHs (default training/stages) and ignores them locally, remembering which; `restore` undoes
# both. Commit nothing in between. A GPU training call (training/gpu_train.sh) needs neither
# the tests' fixtures nor the codec: `lighten training/stages tests assets/kokichi-tiny/mimi.safetensors`
# leaves about 26 MB of it.
EXCLUDE=.git/info/exclude
LIGHTENED=.git/kokichi-lightened
lighten() {
    [ ! -e "$LIGHTENED" ] || { echo "already lightened ($(cat "$LIGHTENED")): restore first" >&2; exit 1; }
    git diff --cached --quiet || { echo "the index has staged changes: commit or unstage them first" >&2; exit 1; }
    local paths=("$@")
    [ ${#paths[@]} -gt 0 ] || paths=(training/stages)
    git rm -r -q --cached -- "${paths[@]}" && printf '/%s\n' "${paths[@]}" >>"$EXCLUDE"
    printf '%s\n' "${paths[@]}" >"$LIGHTENED"
    echo "untracked ${paths[*]}; run '$0 restore' after the device calls"
}
restore() {
    [ -e "$LIGHTENED" ] || { echo "nothing to restore" >&2; exit 1; }
    local p
    mapfile -t paths <"$LIGHTENED"
    git reset -q -- "${paths[@]}"
    for p in "${paths[@]}"; do grep -vxF "/$p" "$EXCLUDE" >"$EXCLUDE.tmp" || true; mv "$EXCLUDE.tmp" "$EXCLUDE"; done
    rm -f "$LIGHTENED"
    git status --short -- "${paths[@]}"
}

case "${1:-}" in
pack) pack "${2:?pack DIR NAME...}" "${@:3}" ;;
run) run "${2:?run DIR [speed|checks|all]}" "${3:-all}" ;;
lighten) lighten "${@:2}" ;;
restore) restore ;;
*)
    echo "usage: $0 pack DIR NAME... | run DIR [speed|checks|all] | lighten [PATH...] | restore" >&2
    exit 2
    ;;
esac
