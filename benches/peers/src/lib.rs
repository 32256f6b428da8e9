//! Empty: this crate exists for `cargo bench`.
