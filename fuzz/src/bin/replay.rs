//! Runs the fuzz harness on files (crashes, regressions, the corpus) without AFL:
//! `cargo run --release --bin replay -- fuzz/regressions/*`. With `--write-seeds DIR` it writes
//! the starting corpus instead.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--write-seeds") {
        let dir = std::path::Path::new(args.get(1).expect("a directory"));
        std::fs::create_dir_all(dir).expect("create the corpus directory");
        for (i, seed) in tower_swr_fuzz::seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write a seed");
        }
        return;
    }
    let mut failed = 0;
    for path in &args {
        let data = std::fs::read(path).expect("read an input");
        let outcome = std::panic::catch_unwind(|| tower_swr_fuzz::run(&data));
        match outcome {
            Ok(()) => println!("ok      {path}"),
            Err(_) => {
                failed += 1;
                println!("FAILED  {path}");
            }
        }
    }
    println!("{} passed, {failed} failed", args.len() - failed);
    std::process::exit(i32::from(failed > 0));
}
