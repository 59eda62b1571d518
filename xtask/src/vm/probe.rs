//! The kernel-TLS smoke test in a VM: the gateway's own probe
//! (`gateway::channel::probe_ktls` and `verify_ktls_wire`), run through the
//! `ktls_selftest` example in its `probe` mode (built by
//! [`super::build_ktls_selftest`]), so the VM checks the very code the
//! gateway runs at start-up.

use std::time::Duration;

use anyhow::Result;

use super::ktls_suite::Selftest;
use super::{PreparedKernel, VmOutput, run_in_vm};

/// Runs the probe on `kernel` (sending `bytes` through kernel TLS) with the
/// selftest binary.
pub fn run_ktls_probe(
    kernel: &PreparedKernel,
    selftest: &Selftest,
    bytes: usize,
    timeout: Duration,
) -> Result<VmOutput> {
    run_in_vm(
        kernel,
        &selftest.vm_files(),
        &format!("ktls_selftest probe {bytes}"),
        timeout,
    )
}
