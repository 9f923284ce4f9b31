//! The package that owns the workspace's examples (`examples/`) and their tests (`tests/`).
//!
//! It has no API of its own: Cargo wants a library or binary target in every package, and this
//! empty library is it. Run an example with `cargo run --example NAME -- ARGS`, e.g.
//! `cargo run --example log -- --dir /tmp/mylog append hello`.
