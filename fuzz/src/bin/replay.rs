//! Runs a fuzz target on files (crashes, regressions, the corpus) without AFL:
//!
//! ```text
//! replay [--request|--codec] FILES...  # the response target, or the request or codec target
//! replay --write-seeds DIR        # the targets' starting corpora (request ones named req-*,
//!                                 # codec ones codec-*)
//! replay --random N [SEED]        # N random request-target inputs mutated from its seeds
//! replay --random-codec N [SEED]  # N random codec-target inputs mutated from its seeds
//! ```
//!
//! e.g. `cargo run --release --bin replay -- --request fuzz/regressions/req-*`.

use std::panic::{catch_unwind, AssertUnwindSafe};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--write-seeds") => write_seeds(args.get(1).expect("a directory")),
        Some(mode @ ("--random" | "--random-codec")) => {
            let n = args.get(1).and_then(|n| n.parse().ok()).expect("a count");
            let seed = match args.get(2) {
                Some(seed) => seed.parse().expect("a numeric seed"),
                None => clock_seed(),
            };
            let failed = if mode == "--random" {
                random(
                    n,
                    seed,
                    &tower_swr_fuzz::request_seeds(),
                    tower_swr_fuzz::run_request,
                )
            } else {
                random(
                    n,
                    seed,
                    &tower_swr_fuzz::codec_seeds(),
                    tower_swr_fuzz::run_codec,
                )
            };
            std::process::exit(i32::from(failed > 0));
        }
        Some("--codec") => {
            args.remove(0);
            std::process::exit(i32::from(replay(&args, tower_swr_fuzz::run_codec) > 0));
        }
        Some("--request") => {
            args.remove(0);
            std::process::exit(i32::from(replay(&args, tower_swr_fuzz::run_request) > 0));
        }
        _ => std::process::exit(i32::from(replay(&args, tower_swr_fuzz::run) > 0)),
    }
}

fn write_seeds(dir: &str) {
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir).expect("create the corpus directory");
    for (i, seed) in tower_swr_fuzz::seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write a seed");
    }
    for (i, seed) in tower_swr_fuzz::request_seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("req-seed-{i:02}")), seed).expect("write a seed");
    }
    for (i, seed) in tower_swr_fuzz::codec_seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("codec-seed-{i:02}")), seed).expect("write a seed");
    }
}

/// Runs `target` on each file; returns how many failed.
fn replay(paths: &[String], target: fn(&[u8])) -> usize {
    let mut failed = 0;
    for path in paths {
        let data = std::fs::read(path).expect("read an input");
        match catch_unwind(|| target(&data)) {
            Ok(()) => println!("ok      {path}"),
            Err(_) => {
                failed += 1;
                println!("FAILED  {path}");
            }
        }
    }
    println!("{} passed, {failed} failed", paths.len() - failed);
    failed
}

/// Runs `n` inputs of `target` mutated from its seeds; returns how many failed.
fn random(n: u64, seed: u64, seeds: &[Vec<u8>], target: fn(&[u8])) -> usize {
    println!("--random {n} {seed}");
    let mut rng = XorShift(seed | 1);
    let mut failures = Vec::new();
    for _ in 0..n {
        let input = mutate(seeds, &mut rng);
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            println!("FAILED  {:?}", String::from_utf8_lossy(&input));
            println!("        bytes {input:?}");
            failures.push(input);
        }
    }
    println!(
        "{} passed, {} failed",
        n - failures.len() as u64,
        failures.len()
    );
    failures.len()
}

/// A seed with a few random edits: flipped or replaced bytes, spliced numbers, lines taken
/// from another seed.
fn mutate(seeds: &[Vec<u8>], rng: &mut XorShift) -> Vec<u8> {
    const NUMBERS: [&[u8]; 12] = [
        b"0",
        b"1",
        b"-",
        b"9",
        b"64",
        b"65",
        b"255",
        b"4294967295",
        b"4294967296",
        b"9223372036854775807",
        b"18446744073709551615",
        b"18446744073709551616",
    ];
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(6) {
            0 if at < input.len() => input[at] ^= 1 << rng.below(8),
            1 if at < input.len() => input[at] = b"0123456789-,= \n"[rng.below(15)],
            2 => {
                let number = NUMBERS[rng.below(NUMBERS.len())];
                input.splice(at..at, number.iter().copied());
            }
            3 if at < input.len() => {
                // Replace a run of digits (or one byte) with another number.
                let end = (at..input.len())
                    .find(|&i| !input[i].is_ascii_digit())
                    .unwrap_or(input.len())
                    .max(at + 1);
                let number = NUMBERS[rng.below(NUMBERS.len())];
                input.splice(at..end, number.iter().copied());
            }
            4 => {
                // Append a line of another seed.
                let other = &seeds[rng.below(seeds.len())];
                if let Some(line) = other.get(4..).and_then(|f| {
                    let lines: Vec<&[u8]> = f.split(|b| *b == b'\n').collect();
                    lines.get(rng.below(lines.len())).copied()
                }) {
                    input.push(b'\n');
                    input.extend_from_slice(line);
                }
            }
            _ if at < input.len() => {
                input.remove(at);
            }
            _ => {}
        }
    }
    // The first four bytes are flags, method, length and delay: random ones now and then.
    if input.len() >= 4 && rng.below(4) == 0 {
        input[rng.below(4)] = rng.next() as u8;
    }
    input
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// Marsaglia's xorshift64.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
