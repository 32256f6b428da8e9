//! A `redis-server` of a test's own, on a free loopback port, or a Redis Cluster of three
//! (tests of feature `redis`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::time::{SystemTime, UNIX_EPOCH};

use tower_swr::engine::Lifetime;
use tower_swr::redis::{RedisConfig, TierCodec};

/// A `redis-server` of the test's own; stopped when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    /// Starts one, or `None` (with the reason printed) when `redis-server` is not installed.
    pub fn start(test: &str) -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipping {test}: redis-server is not installed (apt install redis-server)");
            return None;
        }
        // A free port may be taken (by another test's connection) before the server binds
        // it: then the server exits, and another port is tried.
        for _ in 0..5 {
            let mut server = Self {
                child: None,
                port: free_port(),
            };
            if server.try_launch() {
                return Some(server);
            }
            server.stop();
        }
        panic!("redis-server did not start on any of five free ports");
    }

    /// Starts the server again on its port (after [`stop`](Self::stop)).
    pub fn launch(&mut self) {
        assert!(self.try_launch(), "redis-server did not listen");
    }

    fn try_launch(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let child = self.child.insert(child);
        listens(child, self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn config(&self) -> RedisConfig {
        RedisConfig::new(&self.url())
            .expect("a valid address")
            .timeout(Duration::from_millis(100))
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A plain client for looking inside.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    pub fn keys(&self) -> Vec<Vec<u8>> {
        let mut connection = self.client().get_connection().expect("connect");
        redis::cmd("KEYS")
            .arg("*")
            .query(&mut connection)
            .expect("KEYS")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped server ignores SIGKILL's delivery order issues: wake it first.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
    }
}

/// A Redis Cluster of three masters (no replicas) of the test's own, each on a free loopback
/// port with its cluster bus on another free port; every node is stopped, and its directory
/// removed, when dropped.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

/// Waits (up to 10 s) until `child` listens on `port`; false if it exits first (its port was
/// taken) or never does.
fn listens(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Whether `program --version` runs (the program is installed).
fn installed(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisCluster {
    /// Starts three nodes, joins them into one cluster and waits until every node says
    /// `cluster_state:ok`; `None` (with the reason printed) when `redis-server` or `redis-cli`
    /// is not installed.
    pub fn start(test: &str) -> Option<Self> {
        for program in ["redis-server", "redis-cli"] {
            if !installed(program) {
                eprintln!("skipping {test}: {program} is not installed (apt install redis-server)");
                return None;
            }
        }
        // Six distinct ports: three for clients, three for the cluster bus (the default bus
        // port, the client port + 10000, may be taken or past 65535). A port taken before its
        // node binds it (the node exits) means another six.
        let mut attempt = 0;
        let cluster = loop {
            attempt += 1;
            let mut ports: Vec<u16> = Vec::new();
            while ports.len() < 6 {
                let port = free_port();
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
            let bus_ports = ports.split_off(3);
            let dir = std::env::temp_dir().join(format!(
                "tower-swr-cluster-{}-{}",
                std::process::id(),
                ports[0]
            ));
            std::fs::create_dir_all(&dir).expect("a directory for the cluster");
            let mut cluster = Self {
                nodes: Vec::new(),
                ports,
                dir,
            };
            let mut all_listen = true;
            for (port, bus) in cluster.ports.clone().into_iter().zip(bus_ports) {
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes"])
                    .args(["--cluster-port", &bus.to_string()])
                    .arg("--cluster-config-file")
                    .arg(cluster.dir.join(format!("nodes-{port}.conf")))
                    .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                    .arg("--dir")
                    .arg(&cluster.dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server starts");
                cluster.nodes.push(child);
                let node = cluster.nodes.last_mut().expect("just pushed");
                all_listen = all_listen && listens(node, port);
            }
            if all_listen {
                break cluster;
            }
            assert!(attempt < 5, "a cluster node did not listen (five tries)");
        };
        let addresses: Vec<String> = (cluster.ports.iter())
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in 0..cluster.ports.len() {
            loop {
                let info: Option<String> = cluster
                    .client(node)
                    .get_connection()
                    .and_then(|mut c| ::redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                    .ok();
                if info.is_some_and(|info| info.contains("cluster_state:ok")) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never reached cluster_state:ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(cluster)
    }

    /// `redis://127.0.0.1:P/` for every node.
    pub fn urls(&self) -> Vec<String> {
        (self.ports.iter())
            .map(|port| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }

    /// The tier's configuration for this cluster, from the address of one node only (the
    /// client finds the others).
    pub fn config(&self) -> RedisConfig {
        RedisConfig::cluster(&self.urls()[..1])
            .expect("valid addresses")
            .timeout(Duration::from_millis(250))
    }

    /// A plain client of node `node` (0, 1 or 2), for looking inside.
    pub fn client(&self, node: usize) -> ::redis::Client {
        ::redis::Client::open(self.urls()[node].as_str()).expect("client")
    }

    /// Every key node `node` holds.
    pub fn keys(&self, node: usize) -> Vec<Vec<u8>> {
        let mut connection = self.client(node).get_connection().expect("connect");
        ::redis::cmd("KEYS")
            .arg("*")
            .query(&mut connection)
            .expect("KEYS")
    }

    /// `DBSIZE` of node `node`.
    pub fn dbsize(&self, node: usize) -> usize {
        let mut connection = self.client(node).get_connection().expect("connect");
        ::redis::cmd("DBSIZE")
            .query(&mut connection)
            .expect("DBSIZE")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback TCP proxy to `port` that delays what the client sends by `delay` (each chunk
/// `delay` after it arrived, in order); answers come back at once. Runs until the runtime
/// ends. Returns the proxy's port.
pub async fn delaying_proxy(port: u16, delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy_port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let (chunks, mut delayed) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
                    let due = tokio::time::Instant::now() + delay;
                    if chunks.send((due, buffer[..n].to_vec())).is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                while let Some((due, chunk)) = delayed.recv().await {
                    tokio::time::sleep_until(due).await;
                    if server_write.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    proxy_port
}

/// A test codec for `RedisTier` without HTTP: keys are strings, values numbers, the lifetime
/// as seven 8-byte fields before the value; a scope is a key prefix.
/// Keys are strings, values numbers; a scope is a key prefix.
pub struct Codec;

fn nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn at_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

impl TierCodec<String, u64> for Codec {
    fn key_bytes(&self, key: &String) -> Vec<u8> {
        key.as_bytes().to_vec()
    }

    fn decode_key(&self, bytes: &[u8]) -> Option<String> {
        String::from_utf8(bytes.to_vec()).ok()
    }

    fn encode(&self, _key: &String, value: &u64, lifetime: &Lifetime) -> Option<Vec<u8>> {
        let fields = [
            nanos(lifetime.stored_at),
            u64::try_from(lifetime.initial_age.as_nanos()).ok()?,
            nanos(lifetime.fresh_until),
            nanos(lifetime.stale_until),
            nanos(lifetime.error_until),
            nanos(lifetime.retain_until),
            u64::try_from(lifetime.load_time.as_nanos()).ok()?,
            *value,
        ];
        Some(fields.iter().flat_map(|f| f.to_be_bytes()).collect())
    }

    fn decode(&self, _key: &String, bytes: &[u8]) -> Option<(u64, Lifetime)> {
        if bytes.len() != 64 {
            return None;
        }
        let fields: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let [stored, age, fresh, stale, error, retain, load, value] = fields[..] else {
            return None;
        };
        let lifetime = Lifetime {
            stored_at: at_nanos(stored),
            initial_age: Duration::from_nanos(age),
            fresh_until: at_nanos(fresh),
            stale_until: at_nanos(stale),
            error_until: at_nanos(error),
            retain_until: at_nanos(retain),
            load_time: Duration::from_nanos(load),
        };
        Some((value, lifetime))
    }

    fn scope_matches(&self, scope: &[u8], key: &String) -> bool {
        key.as_bytes().starts_with(scope)
    }
}

pub type Tier = tower_swr::redis::RedisTier<String, u64, Codec>;

/// A value stored just now, fresh for a minute.
pub fn loaded_now() -> Lifetime {
    let now = SystemTime::now();
    Lifetime {
        stored_at: now,
        initial_age: Duration::ZERO,
        fresh_until: now + Duration::from_secs(60),
        stale_until: now + Duration::from_secs(60),
        error_until: now + Duration::from_secs(60),
        retain_until: now + Duration::from_secs(60),
        load_time: Duration::ZERO,
    }
}

pub fn flushall(redis: &RedisServer) {
    let mut connection = redis.client().get_connection().expect("connect");
    let () = redis::cmd("FLUSHALL")
        .query(&mut connection)
        .expect("FLUSHALL");
}
