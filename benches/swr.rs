//! Placeholder replaced by the benchmark suite (issue: performance).
fn main() {}
