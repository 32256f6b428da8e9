//! The seed `task-swr-config-cache.md`, on the generic engine: model configuration read from a
//! database, with no hard-coded fallback.
//!
//! 1. a fresh entry is returned at once;
//! 2. stale or missing: ask the database;
//! 3. the database fails: use the stale entry and log a WARNING;
//! 4. nothing cached and the database fails: an explicit error.
//!
//! ```sh
//! cargo run --example config_cache
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower_swr::engine::{Freshness, Loaded, Status, SwrCache};

#[derive(Clone, Debug)]
struct JudgeModels {
    primary: String,
}

#[derive(Debug)]
struct DbUnavailable;

impl fmt::Display for DbUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("database unavailable")
    }
}

/// A database that can be switched off.
#[derive(Clone, Default)]
struct Database {
    down: Arc<AtomicBool>,
    version: Arc<AtomicU32>,
}

impl Database {
    async fn judge_models(&self, language: &str) -> Result<JudgeModels, DbUnavailable> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(DbUnavailable);
        }
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(JudgeModels {
            primary: format!("qwen3-{language}-v{version}"),
        })
    }
}

/// `ModelConfigService::getJudgeModels`, without a hard-coded fallback.
struct ModelConfigService {
    cache: SwrCache<String, JudgeModels>,
    db: Database,
}

impl ModelConfigService {
    async fn judge_models(&self, language: &str) -> Result<JudgeModels, String> {
        let db = self.db.clone();
        let lang = language.to_owned();
        let load = move || async move {
            let models = db.judge_models(&lang).await?;
            Ok::<_, DbUnavailable>(Loaded::new(
                models,
                // 300 ms fresh here so the demo is quick (5 minutes in the seed); stale is kept
                // for an hour as the fallback for a database outage.
                Freshness::new(Duration::from_millis(300))
                    .with_stale_if_error(Duration::from_secs(3600)),
            ))
        };
        match self
            .cache
            .get_or_load(format!("judges:{language}"), load)
            .await
        {
            Ok(found) => {
                // The engine itself logs the WARNING when it falls back to stale data.
                println!(
                    "  -> {:<24} status={:?} stale={} age={:?}",
                    found.value.primary,
                    found.status,
                    found.is_stale(),
                    found.age
                );
                Ok(found.value)
            }
            Err(error) => Err(format!(
                "Cannot get judge models for language \"{language}\": {error} and no cached data"
            )),
        }
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_target(false).init();
    let db = Database::default();
    let service = ModelConfigService {
        cache: SwrCache::builder().capacity_bytes(1 << 20).build(),
        db: db.clone(),
    };

    println!("cold start, database down:");
    db.down.store(true, Ordering::SeqCst);
    let cold = service.judge_models("en").await;
    println!("  -> {cold:?}");
    assert!(cold.is_err(), "a cold start never invents a value");

    println!("database up: loaded, then served fresh from memory:");
    db.down.store(false, Ordering::SeqCst);
    service.judge_models("en").await.expect("loaded");
    let fresh = service.cache.get("judges:en").expect("cached");
    assert_eq!(fresh.status, Status::Fresh);
    service.judge_models("en").await.expect("fresh");

    println!("the entry goes stale and the database fails: stale data with a WARNING:");
    tokio::time::sleep(Duration::from_millis(400)).await;
    db.down.store(true, Ordering::SeqCst);
    let stale = service.judge_models("en").await.expect("stale fallback");
    assert!(stale.primary.ends_with("v1"));

    println!("the database recovers: fresh data again:");
    db.down.store(false, Ordering::SeqCst);
    let recovered = service.judge_models("en").await.expect("fresh");
    assert!(recovered.primary.ends_with("v2"));

    let stats = service.cache.stats();
    println!(
        "stats: fresh_hits={} misses={} stale_if_error={}",
        stats.fresh_hits, stats.misses, stats.stale_if_error
    );
}
