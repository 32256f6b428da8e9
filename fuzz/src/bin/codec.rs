//! AFL++ entry point for the codec target (persistent mode): `cargo afl build --release
//! --features afl`, then `fuzz/run.sh SECONDS codec`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tower_swr_fuzz::run_codec(data);
    });
}
