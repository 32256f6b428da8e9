//! AFL++ entry point (persistent mode): `cargo afl build --release --features afl`, then see `fuzz/run.sh`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tower_swr_fuzz::run(data);
    });
}
