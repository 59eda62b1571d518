//! Namespace test harness (placeholder).
