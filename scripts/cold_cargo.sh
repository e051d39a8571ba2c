#!/usr/bin/env bash
# Runs a command against a cold cargo, as on a fresh machine:
#   ./scripts/cold_cargo.sh ./scripts/test.sh
# CARGO_HOME is an empty directory (no registry cache, no git checkouts, no installed cargo tools)
# and PATH keeps the Rust toolchain (rustup's proxies: cargo, rustc, rustfmt, clippy) but drops the
# directory holding them, so a cargo tool installed there (cargo-deny, ...) is not found either.
# The toolchain itself is not downloaded again. .ci/run runs the test suite this way, so a step that
# relies on what a developer's machine happens to have cached fails in CI, not at a user's.
# XBENCH_COLD_CARGO_HOME=DIR uses DIR (emptied first) instead of a temporary directory.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi
cargo_path="$(command -v cargo)" || { echo "error: cargo is not on PATH (install Rust with rustup)" >&2; exit 1; }
cargo_bin="$(cd "$(dirname "$cargo_path")" && pwd)"
if [[ -n "${XBENCH_COLD_CARGO_HOME:-}" ]]; then
  home="$XBENCH_COLD_CARGO_HOME"
  rm -rf "$home"
  mkdir -p "$home"
else
  home="$(mktemp -d -t xbench-cold-cargo.XXXXXX)"
  trap 'rm -rf "$home"' EXIT
fi
toolchain="$home/toolchain"
mkdir -p "$toolchain" "$home/bin"
for tool in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt rustup rust-gdb; do
  if [[ -e "$cargo_bin/$tool" ]]; then
    ln -s "$cargo_bin/$tool" "$toolchain/$tool"
  fi
done
# PATH without the directory that held cargo (where `cargo install` puts its tools).
path=""
IFS=: read -ra parts <<<"$PATH"
for part in "${parts[@]}"; do
  [[ -n "$part" && "$(cd "$part" 2>/dev/null && pwd)" != "$cargo_bin" ]] && path="${path:+$path:}$part"
done
echo "cold cargo: CARGO_HOME=$home (empty), toolchain from $cargo_bin" >&2
CARGO_HOME="$home" PATH="$home/bin:$toolchain:$path" "$@"
