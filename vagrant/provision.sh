#!/usr/bin/env bash
# Provisions one VM of the Vagrant topology: peers and tools on every node,
# the Rust toolchains and the project build on the gateways.
set -euo pipefail
name="$1"; role="$2"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends iperf3 iproute2 ca-certificates curl build-essential git
# No forwarding anywhere: the gateways relay at the transport layer.
sysctl -w net.ipv4.ip_forward=0
case "$name" in
  prod) ip route add 10.10.2.0/24 via 10.10.1.1 || true ;;   # reach gwa's WAN side only
  cons) ip route add 10.10.2.0/24 via 10.10.3.1 || true ;;
esac
if [ "$role" = gateway ]; then
  if ! command -v cargo >/dev/null; then
    curl -sSf https://sh.rustup.rs | sh -s -- -y --default-toolchain 1.95.0
    "$HOME/.cargo/bin/rustup" toolchain install nightly --profile minimal
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
  cd /vagrant
  cargo xtask setup demo
  cargo build --release -p gateway --bin s2cs -p control --bin s2uc
  install -m 0755 target/release/s2cs target/release/s2uc /usr/local/bin/
  s2cs check
fi
