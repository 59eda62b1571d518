//! The kernel-TLS smoke test in a VM: the gateway's own probe
//! (`gateway::channel::probe_ktls` and `verify_ktls_wire`), run through the
//! static `ktls_selftest` example in its `probe` mode (built by
//! [`super::build_ktls_selftest`]), so the VM checks the very code the
//! gateway runs at start-up.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::{PreparedKernel, VmOutput, run_in_vm};

/// Runs the probe on `kernel` (sending `bytes` through kernel TLS) with the
/// static selftest binary.
pub fn run_ktls_probe(
    kernel: &PreparedKernel,
    selftest: &Path,
    bytes: usize,
    timeout: Duration,
) -> Result<VmOutput> {
    run_in_vm(
        kernel,
        &[(selftest, "ktls_selftest")],
        &format!("ktls_selftest probe {bytes}"),
        timeout,
    )
}
