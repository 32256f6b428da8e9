//! AFL++ entry point for the request target (persistent mode): `cargo afl build --release
//! --features afl`, then `fuzz/run.sh SECONDS request`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tower_swr_fuzz::run_request(data);
    });
}
