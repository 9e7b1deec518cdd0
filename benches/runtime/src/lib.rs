//! The heavier benchmarks of MetaBridge, in a package of their own so that
//! the runtime's demo builds neither plotters nor criterion:
//! `cargo run --release -p metabridge-bench --example scaling` (the
//! payload, image and clients series, with their plots in `docs/`) and
//! `cargo bench -p metabridge-bench --bench micro` (see BENCHMARKS.md).
//! This library is empty: the code is in `examples/` and `benches/`.
