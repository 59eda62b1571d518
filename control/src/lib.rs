//! SciStream-compatible control plane (placeholder; see issue 4).
