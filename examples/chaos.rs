//! Chaos run for progressd (`bench/chaos.sh`, and `tests/chaos.rs` in CI):
//! its own `redis-server`, its own PostgreSQL cluster and three progressd
//! instances sharing both (one key prefix, one database), all on free ports;
//! writers and readers go through random instances while a chaos loop
//! SIGKILLs and restarts Redis, PostgreSQL and one instance at a time. At the
//! end it waits past the persist interval and checks that every acknowledged
//! write is readable through every instance and held by PostgreSQL. The
//! definitions it applies are printed in its header (see `HEADER`).
//!
//! ```text
//! cargo run --release --example chaos -- --bin target/release/progressd --seconds 60
//! ```
//!
//! Settings (flags win over the environment): `--bin`/`CHAOS_BIN` (default
//! `target/release/progressd`), `--seconds`/`CHAOS_SECONDS` (60),
//! `--writers`/`CHAOS_WRITERS` (4), `--ids`/`CHAOS_IDS_PER_WRITER` (8),
//! `--readers`/`CHAOS_READERS` (4), `--persist`/`CHAOS_PERSIST_SECONDS` (1),
//! `--seed`/`CHAOS_SEED` (random). Exit status 0 when no violation was
//! found, 1 on violations, 2 when the set-up failed.
#![allow(dead_code)]

#[path = "../tests/common/postgres.rs"]
mod postgres;
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{OwnPostgres, free_port, kill_child, signal_child};
use redis_server::OwnRedis;

/// What the run promises to check, printed before it starts.
pub const HEADER: &str = "\
definitions (from README: Storage, What a crash can lose, Known limits; ARCHITECTURE.md: degraded modes):
  acknowledged write   a PUT/PATCH answered 200/201; its version is the ETag, and its body
                       carries `current` = a per-id sequence number only its one writer uses,
                       so every write of an id is told apart even if versions are reused
  P                    PROGRESS_PERSIST_INTERVAL_SECONDS; S = 3 s of slack (breaker probe, flush)
  flush deadline(w)    ack(w) + P + S, moved to (end of outage) + P + S by every PostgreSQL
                       outage that overlaps [ack(w), deadline]
  regression           a reader (one sequential client, random instances) sees a record's
                       `current` or version lower than it saw before (404 counts as 0)
  missed writes M      the acknowledged writes the regressing read did not show (seq above what
                       it showed, up to what was seen before, acknowledged before it began)
  sent(w)              when w's request went out: it took effect somewhere in [sent(w), ack(w)]
  documented, crash    every w in M: a Redis kill R with sent(w) <= R <= the read, and either
                       the read began before flush deadline(w) (README, Known limits: readers
                       elsewhere see the last persisted version until that instance flushes) or
                       the instance that took w was SIGKILLed at K, sent(w) <= K < deadline(w),
                       K <= R (README, What a crash can lose); M empty (only unacknowledged
                       writes missed): a Redis kill between the two reads (minus P + S)
  documented, cache    `current` went back, no Redis kill between the reads, and every write in M
                       was acknowledged < 250 ms before the regressing read began (M empty: the
                       reads were < 250 ms apart) (README, Read cache: the stated bound)
  documented, recovery the read began within S of Redis coming back (its instance's breaker may
                       not have probed Redis yet, so it still reads PostgreSQL), and every w in M
                       was acknowledged after Redis went down and before its flush deadline
                       (README, Known limits: an instance whose breaker is still open)
  version rewind       version lower, `current` not: documented only with a Redis kill between
  lost write           at the end (all up, /readyz ok everywhere, P + S later): an acknowledged
                       write whose seq is above the `current` an instance serves (or PostgreSQL
                       holds); documented only if its instance was SIGKILLed before its flush
                       deadline and Redis was killed after that (What a crash can lose);
                       missing in PostgreSQL alone, the SIGKILL is enough: PostgreSQL gets the
                       record with its next write, and there is none after the load (ibid.);
                       everything else is a violation
  violation            an undocumented regression or lost write, a 500, an unexpected status
                       (4xx other than 404 on a read), an ETag that is not the body's version,
                       or tiers that disagree at the end (instances, or PostgreSQL's row)
  not violations       503s and refused connections while stores or instances are down
                       (never acknowledged), timeouts (not acknowledged either)";

#[derive(Clone, Debug)]
pub struct Config {
    pub bin: PathBuf,
    pub seconds: u64,
    pub writers: usize,
    pub ids_per_writer: usize,
    pub readers: usize,
    pub persist_seconds: u64,
    pub seed: u64,
}

impl Config {
    /// From the environment, then `args` (`--name value`).
    pub fn from_env_and_args(args: &[String]) -> Result<Self, String> {
        let get = |flag: &str, env: &str| -> Option<String> {
            let mut found = std::env::var(env).ok().filter(|v| !v.is_empty());
            let mut i = 0;
            while i < args.len() {
                if args[i] == flag && i + 1 < args.len() {
                    found = Some(args[i + 1].clone());
                    i += 1;
                }
                i += 1;
            }
            found
        };
        let num = |v: Option<String>, name: &str, default: u64| -> Result<u64, String> {
            v.map_or(Ok(default), |v| v.parse().map_err(|_| format!("{name}: expected a whole number, got {v:?}")))
        };
        let bin = get("--bin", "CHAOS_BIN").unwrap_or_else(|| "target/release/progressd".into());
        let config = Self {
            bin: PathBuf::from(bin),
            seconds: num(get("--seconds", "CHAOS_SECONDS"), "CHAOS_SECONDS", 60)?,
            writers: num(get("--writers", "CHAOS_WRITERS"), "CHAOS_WRITERS", 4)? as usize,
            ids_per_writer: num(get("--ids", "CHAOS_IDS_PER_WRITER"), "CHAOS_IDS_PER_WRITER", 8)? as usize,
            readers: num(get("--readers", "CHAOS_READERS"), "CHAOS_READERS", 4)? as usize,
            persist_seconds: num(get("--persist", "CHAOS_PERSIST_SECONDS"), "CHAOS_PERSIST_SECONDS", 1)?,
            seed: num(get("--seed", "CHAOS_SEED"), "CHAOS_SEED", fastrand::u64(..))?,
        };
        if config.writers == 0 || config.ids_per_writer == 0 || config.persist_seconds == 0 {
            return Err("writers, ids per writer and the persist interval must be at least 1".into());
        }
        Ok(config)
    }
}

// --- processes ----------------------------------------------------------------

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}_{nanos}", std::process::id())
}

/// One progressd process on a fixed port (the same across restarts).
struct Instance {
    index: usize,
    port: u16,
    bin: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Instance {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) -> Result<(), String> {
        let log = File::options().create(true).append(true).open(&self.log).map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.bin);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", self.port.to_string())
            .env("PROGRESS_HOST", "127.0.0.1")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let mut child = command.spawn().map_err(|e| format!("{}: {e}", self.bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!(
                    "progressd {} exited at start-up with {status}; log {}",
                    self.index,
                    self.log.display()
                ));
            }
            if http_ok(self.port, "/healthz") {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("progressd {} did not answer /healthz; log {}", self.index, self.log.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    fn terminate(&mut self) {
        signal_child(&mut self.child, "-TERM", Duration::from_secs(25));
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking GET on 127.0.0.1:port that answers 200 (for start-up checks).
fn http_ok(port: u16, path: &str) -> bool {
    http_get_raw(port, path).is_some_and(|(status, _)| status == 200)
}

fn http_get_raw(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    Some((status, response))
}

// --- what happened ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Redis,
    Postgres,
    Instance(usize),
}

#[derive(Clone, Copy, Debug)]
struct Outage {
    target: Target,
    down: f64,
    up: f64,
}

#[derive(Clone, Debug)]
struct Ack {
    seq: u64,
    version: u64,
    /// When the request went out: it may have taken effect any time
    /// between this and `ack`.
    sent: f64,
    ack: f64,
    instance: usize,
}

#[derive(Clone, Copy, Debug)]
struct Obs {
    seq: u64,
    version: u64,
    start: f64,
    end: f64,
    instance: usize,
}

#[derive(Clone, Debug)]
struct Regression {
    id: String,
    before: Obs,
    after: Obs,
}

#[derive(Default)]
struct Counts {
    writes_sent: u64,
    writes_acked: u64,
    reads_sent: u64,
    reads_ok: u64,
    status_5xx: BTreeMap<(&'static str, u16), u64>,
    other_status: BTreeMap<(&'static str, u16), u64>,
    errors: BTreeMap<(&'static str, &'static str), u64>,
    etag_mismatch: u64,
    bad_body: u64,
}

struct Shared {
    start: Instant,
    bases: Vec<String>,
    counts: Mutex<Counts>,
    acks: Mutex<HashMap<String, Vec<Ack>>>,
    regressions: Mutex<Vec<Regression>>,
    samples: Mutex<Vec<String>>,
}

impl Shared {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

fn classify_error(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
}

fn etag_version(response: &reqwest::Response) -> Option<u64> {
    let etag = response.headers().get("etag")?.to_str().ok()?;
    etag.trim_start_matches("W/").trim_matches('"').parse().ok()
}

async fn writer(shared: Arc<Shared>, index: usize, ids: usize, deadline: f64, mut rng: fastrand::Rng) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut seq = vec![0u64; ids];
    let mut created = vec![false; ids];
    while shared.now() < deadline {
        let k = rng.usize(..ids);
        let id = format!("chaos-w{index}-{k}");
        seq[k] += 1;
        let s = seq[k];
        let instance = rng.usize(..shared.bases.len());
        let url = format!("{}/progress/{id}", shared.bases[instance]);
        let put = !created[k] || rng.u8(..10) == 0;
        let request = if put {
            let body = format!(
                r#"{{"status":"running","current":{s},"total":1000000000,"ttl_seconds":3600,"metadata":{{"writer":{index}}}}}"#
            );
            client.put(&url).header("content-type", "application/json").body(body)
        } else {
            client
                .patch(&url)
                .header("content-type", "application/json")
                .body(format!(r#"{{"current":{s},"message":"seq {s}"}}"#))
        };
        shared.counts.lock().unwrap().writes_sent += 1;
        let sent = shared.now();
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let version = etag_version(&response);
                let _ = response.bytes().await;
                let now = shared.now();
                let mut counts = shared.counts.lock().unwrap();
                match (status, version) {
                    (200 | 201, Some(version)) => {
                        counts.writes_acked += 1;
                        drop(counts);
                        created[k] = true;
                        shared.acks.lock().unwrap().entry(id).or_default().push(Ack {
                            seq: s,
                            version,
                            sent,
                            ack: now,
                            instance,
                        });
                    }
                    (200 | 201, None) => counts.etag_mismatch += 1,
                    (404, _) if !put => {
                        // The record is gone: a read that shows it missing. Classified at the end.
                        *counts.other_status.entry(("write", 404)).or_default() += 1;
                        drop(counts);
                        created[k] = false;
                    }
                    (s, _) if s >= 500 => *counts.status_5xx.entry(("write", s)).or_default() += 1,
                    (s, _) => *counts.other_status.entry(("write", s)).or_default() += 1,
                }
            }
            Err(e) => *shared.counts.lock().unwrap().errors.entry(("write", classify_error(&e))).or_default() += 1,
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(2..10))).await;
    }
}

async fn reader(shared: Arc<Shared>, ids: Vec<String>, deadline: f64, mut rng: fastrand::Rng) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut last: HashMap<usize, Obs> = HashMap::new();
    while shared.now() < deadline {
        let k = rng.usize(..ids.len());
        let instance = rng.usize(..shared.bases.len());
        let url = format!("{}/progress/{}", shared.bases[instance], ids[k]);
        shared.counts.lock().unwrap().reads_sent += 1;
        let start = shared.now();
        let result = client.get(&url).send().await;
        let observed = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let etag = etag_version(&response);
                let body = response.bytes().await;
                let end = shared.now();
                let mut counts = shared.counts.lock().unwrap();
                match (status, body) {
                    (200, Ok(body)) => {
                        let parsed: Option<(u64, u64)> = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| Some((v.get("version")?.as_u64()?, v.get("current")?.as_u64()?)));
                        match parsed {
                            Some((version, seq)) => {
                                counts.reads_ok += 1;
                                if etag != Some(version) {
                                    counts.etag_mismatch += 1;
                                }
                                Some(Obs { seq, version, start, end, instance })
                            }
                            None => {
                                counts.bad_body += 1;
                                None
                            }
                        }
                    }
                    (404, _) => {
                        counts.reads_ok += 1;
                        Some(Obs { seq: 0, version: 0, start, end, instance })
                    }
                    (_, Err(e)) => {
                        *counts.errors.entry(("read", classify_error(&e))).or_default() += 1;
                        None
                    }
                    (s, _) if s >= 500 => {
                        *counts.status_5xx.entry(("read", s)).or_default() += 1;
                        None
                    }
                    (s, _) => {
                        *counts.other_status.entry(("read", s)).or_default() += 1;
                        None
                    }
                }
            }
            Err(e) => {
                *shared.counts.lock().unwrap().errors.entry(("read", classify_error(&e))).or_default() += 1;
                None
            }
        };
        if let Some(obs) = observed {
            if let Some(before) = last.get(&k)
                && (obs.seq < before.seq || obs.version < before.version)
            {
                shared.regressions.lock().unwrap().push(Regression { id: ids[k].clone(), before: *before, after: obs });
            }
            last.insert(k, obs);
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(1..5))).await;
    }
}

/// The chaos loop (blocking): one fault at a time, SIGKILL, a while down,
/// start again, a while up. Returns the outages.
fn chaos_loop(
    shared: &Shared,
    redis: &mut OwnRedis,
    pg: &mut OwnPostgres,
    instances: &mut [Instance],
    deadline: f64,
    rng: &mut fastrand::Rng,
) -> Result<Vec<Outage>, String> {
    let mut outages = Vec::new();
    loop {
        let pause = rng.f64() * 2.0 + 1.0;
        if shared.now() + pause >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs_f64(pause));
        let target = match rng.usize(..3) {
            0 => Target::Redis,
            1 => Target::Postgres,
            _ => Target::Instance(rng.usize(..instances.len())),
        };
        let down_for = rng.f64() * 2.5 + 0.3;
        let down = shared.now();
        match target {
            Target::Redis => redis.stop(),
            Target::Postgres => pg.kill(),
            Target::Instance(i) => instances[i].kill(),
        }
        std::thread::sleep(Duration::from_secs_f64(down_for));
        match target {
            Target::Redis => redis.start_again(),
            Target::Postgres => pg.start_again(),
            Target::Instance(i) => instances[i].start()?,
        }
        let up = shared.now();
        eprintln!("chaos: {target:?} killed at {down:.2}s, back at {up:.2}s");
        outages.push(Outage { target, down, up });
    }
    Ok(outages)
}

// --- judging ------------------------------------------------------------------

struct Judge {
    outages: Vec<Outage>,
    p: f64,
}

const SLACK: f64 = 3.0;
const CACHE_WINDOW: f64 = 0.25;

impl Judge {
    fn redis_kills(&self) -> impl Iterator<Item = f64> + '_ {
        self.outages.iter().filter(|o| o.target == Target::Redis).map(|o| o.down)
    }

    fn flush_deadline(&self, ack: f64) -> f64 {
        let mut deadline = ack + self.p + SLACK;
        let mut pg: Vec<&Outage> = self.outages.iter().filter(|o| o.target == Target::Postgres).collect();
        pg.sort_by(|a, b| a.down.total_cmp(&b.down));
        for o in pg {
            if o.down < deadline && o.up > ack {
                deadline = deadline.max(o.up + self.p + SLACK);
            }
        }
        deadline
    }

    /// The instance that took the write was SIGKILLed before its flush deadline: the time.
    fn killed_holding(&self, w: &Ack) -> Option<f64> {
        let deadline = self.flush_deadline(w.ack);
        self.outages
            .iter()
            .filter(|o| o.target == Target::Instance(w.instance) && o.down >= w.sent && o.down < deadline)
            .map(|o| o.down)
            .reduce(f64::min)
    }

    /// A missed write explained by a documented window for a read that began at `read`.
    fn missed_documented(&self, w: &Ack, read_start: f64, read_end: f64) -> bool {
        let deadline = self.flush_deadline(w.ack);
        let killed = self.killed_holding(w);
        self.redis_kills()
            .any(|r| r >= w.sent && r <= read_end && (read_start < deadline || killed.is_some_and(|k| k <= r)))
    }

    /// A missed write explained by an instance that still reads PostgreSQL
    /// after Redis came back (its breaker has not probed yet): the read
    /// began within SLACK of Redis returning, and `w` came after Redis went
    /// down and was not yet due in PostgreSQL.
    fn missed_in_recovery(&self, w: &Ack, read_start: f64) -> bool {
        self.outages.iter().filter(|o| o.target == Target::Redis).any(|o| {
            o.up <= read_start
                && read_start <= o.up + SLACK
                && w.ack >= o.down
                && read_start < self.flush_deadline(w.ack)
        })
    }

    /// A write missing at the end is documented only by the crash window.
    fn lost_documented(&self, w: &Ack) -> bool {
        let Some(k) = self.killed_holding(w) else { return false };
        self.redis_kills().any(|r| r >= k)
    }

    /// A write PostgreSQL misses at the end: its instance died holding it.
    fn pg_lost_documented(&self, w: &Ack) -> bool {
        self.killed_holding(w).is_some()
    }
}

#[derive(Default)]
struct RegressionCounts {
    total: u64,
    documented_crash: u64,
    documented_cache: u64,
    documented_recovery: u64,
    violations: u64,
    seq_regressions: u64,
    version_rewinds: u64,
    max_cache_lag: f64,
}

fn judge_regressions(
    judge: &Judge,
    regressions: &[Regression],
    acks: &HashMap<String, Vec<Ack>>,
    report: &mut Vec<String>,
) -> RegressionCounts {
    let mut counts = RegressionCounts::default();
    let empty = Vec::new();
    for r in regressions {
        counts.total += 1;
        let (b, a) = (&r.before, &r.after);
        let redis_between = judge.redis_kills().any(|k| k >= b.start - judge.p - SLACK && k <= a.end);
        // M: the acknowledged writes the regressing read did not show (none
        // for a version rewind, where `current` did not go back).
        let missed: Vec<&Ack> = acks
            .get(&r.id)
            .unwrap_or(&empty)
            .iter()
            .filter(|w| w.seq > a.seq && w.seq <= b.seq && w.ack <= a.start)
            .collect();
        let documented = if missed.is_empty() {
            redis_between
        } else {
            missed.iter().all(|w| judge.missed_documented(w, a.start, a.end))
        };
        let recovering = !missed.is_empty() && missed.iter().all(|w| judge.missed_in_recovery(w, a.start));
        // The read cache's bound: the writes it missed were acknowledged (or
        // were still in flight, M empty) less than CACHE_WINDOW before it began.
        let lag = missed.iter().map(|w| w.ack).reduce(f64::min).map_or(a.start - b.end, |first| a.start - first);
        if a.seq < b.seq {
            counts.seq_regressions += 1;
        } else {
            counts.version_rewinds += 1;
        }
        if documented {
            counts.documented_crash += 1;
        } else if recovering {
            counts.documented_recovery += 1;
        } else if a.seq < b.seq && !judge.redis_kills().any(|k| k >= b.start && k <= a.end) && lag < CACHE_WINDOW {
            counts.documented_cache += 1;
            counts.max_cache_lag = counts.max_cache_lag.max(lag);
        } else {
            counts.violations += 1;
            if report.len() < 20 {
                report.push(format!(
                    "regression {}: saw current {} v{} via instance {} at {:.3}s, then current {} v{} via instance {} at {:.3}s",
                    r.id, b.seq, b.version, b.instance, b.end, a.seq, a.version, a.instance, a.start
                ));
            }
        }
    }
    counts
}

// --- the run --------------------------------------------------------------------

/// Runs the whole chaos scenario; Ok(true) when no violation was found.
pub fn run(config: Config) -> Result<bool, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut rng = fastrand::Rng::with_seed(config.seed);
    if !config.bin.exists() {
        return Err(format!("{} does not exist (build it, or pass --bin / CHAOS_BIN)", config.bin.display()));
    }
    let workdir = std::env::temp_dir().join(format!("progressd-chaos-{}", unique_suffix()));
    std::fs::create_dir_all(&workdir).map_err(|e| e.to_string())?;

    println!("== progressd chaos run ==");
    println!("{HEADER}");
    println!();

    let mut redis = OwnRedis::start();
    let mut pg = OwnPostgres::start();
    let prefix = format!("chaos-{}:", unique_suffix());
    let env = vec![
        ("REDIS_URL".to_string(), redis.url()),
        ("DATABASE_URL".to_string(), pg.url()),
        ("PROGRESS_KEY_PREFIX".to_string(), prefix.clone()),
        ("PROGRESS_PERSIST_INTERVAL_SECONDS".to_string(), config.persist_seconds.to_string()),
        ("PROGRESS_LOG_LEVEL".to_string(), "warn".to_string()),
        ("PROGRESS_LOG_FORMAT".to_string(), "pretty".to_string()),
    ];
    let mut instances: Vec<Instance> = (0..3)
        .map(|index| Instance {
            index,
            port: free_port(),
            bin: config.bin.clone(),
            env: env.clone(),
            log: workdir.join(format!("progressd-{index}.log")),
            child: None,
        })
        .collect();
    for instance in &mut instances {
        instance.start()?;
    }
    wait_ready(&instances, Duration::from_secs(30))?;

    println!(
        "setup:       redis 127.0.0.1:{}, postgres 127.0.0.1:{} ({}), 3 instances on {:?}, key prefix {prefix}",
        redis.port(),
        pg.port(),
        pg.dir().display(),
        instances.iter().map(|i| i.port).collect::<Vec<_>>()
    );
    println!(
        "load:        {} writers x {} ids, {} readers, {} s, PROGRESS_PERSIST_INTERVAL_SECONDS={}, seed {} (CHAOS_SEED to replay the choices)",
        config.writers, config.ids_per_writer, config.readers, config.seconds, config.persist_seconds, config.seed
    );
    println!("logs:        {}", workdir.display());

    let shared = Arc::new(Shared {
        start: Instant::now(),
        bases: instances.iter().map(Instance::base).collect(),
        counts: Mutex::new(Counts::default()),
        acks: Mutex::new(HashMap::new()),
        regressions: Mutex::new(Vec::new()),
        samples: Mutex::new(Vec::new()),
    });
    let deadline = config.seconds as f64;
    let all_ids: Vec<String> =
        (0..config.writers).flat_map(|w| (0..config.ids_per_writer).map(move |k| format!("chaos-w{w}-{k}"))).collect();
    let mut tasks = Vec::new();
    for w in 0..config.writers {
        tasks.push(runtime.spawn(writer(
            shared.clone(),
            w,
            config.ids_per_writer,
            deadline,
            fastrand::Rng::with_seed(rng.u64(..)),
        )));
    }
    for _ in 0..config.readers {
        tasks.push(runtime.spawn(reader(
            shared.clone(),
            all_ids.clone(),
            deadline,
            fastrand::Rng::with_seed(rng.u64(..)),
        )));
    }
    let outages = chaos_loop(&shared, &mut redis, &mut pg, &mut instances, deadline, &mut rng)?;
    runtime.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
    });
    let load_end = shared.now();

    // Everything is up again: wait for every instance to say so, then past the persist interval.
    wait_ready(&instances, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs_f64(config.persist_seconds as f64 + SLACK));

    let judge = Judge { outages: outages.clone(), p: config.persist_seconds as f64 };
    let acks = shared.acks.lock().unwrap().clone();
    let mut report = Vec::new();

    // Final state through every instance.
    let client =
        reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let mut final_views: HashMap<String, Vec<Option<(u64, u64)>>> = HashMap::new();
    let mut final_errors = 0u64;
    for id in &all_ids {
        let mut views = Vec::new();
        for base in &shared.bases {
            let view = match client.get(format!("{base}/progress/{id}")).send() {
                Ok(r) if r.status().as_u16() == 200 => {
                    let v: serde_json::Value = r.json().map_err(|e| e.to_string())?;
                    Some((v["version"].as_u64().unwrap_or(0), v["current"].as_u64().unwrap_or(0)))
                }
                Ok(r) if r.status().as_u16() == 404 => None,
                Ok(r) => {
                    final_errors += 1;
                    report.push(format!("final read of {id} via {base}: status {}", r.status()));
                    None
                }
                Err(e) => {
                    final_errors += 1;
                    report.push(format!("final read of {id} via {base}: {e}"));
                    None
                }
            };
            views.push(view);
        }
        final_views.insert(id.clone(), views);
    }

    // PostgreSQL's rows, read directly.
    let pg_rows: HashMap<String, (u64, u64, bool)> = runtime.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let rows =
            client.query("SELECT id, version, record, deleted FROM progress", &[]).await.map_err(|e| e.to_string())?;
        let mut out = HashMap::new();
        for row in rows {
            let id: String = row.get(0);
            let version: i64 = row.get(1);
            let record: Vec<u8> = row.get(2);
            let deleted: bool = row.get(3);
            let json = record.splitn(2, |b| *b == b'\n').nth(1).unwrap_or(&[]);
            let current =
                serde_json::from_slice::<serde_json::Value>(json).ok().and_then(|v| v["current"].as_u64()).unwrap_or(0);
            out.insert(id, (version as u64, current, deleted));
        }
        Ok::<_, String>(out)
    })?;

    let mut lost_documented = 0u64;
    let mut lost_violation = 0u64;
    let mut pg_lost_documented = 0u64;
    let mut pg_lost_violation = 0u64;
    let mut disagree = 0u64;
    let mut pg_behind = 0u64;
    let empty = Vec::new();
    for id in &all_ids {
        let id_acks = acks.get(id).unwrap_or(&empty);
        let views = &final_views[id];
        let judge_missing = |shown: u64,
                             what: &str,
                             explained: &dyn Fn(&Ack) -> bool,
                             documented: &mut u64,
                             violation: &mut u64,
                             report: &mut Vec<String>| {
            for w in id_acks.iter().filter(|w| w.seq > shown) {
                if explained(w) {
                    *documented += 1;
                } else {
                    *violation += 1;
                    if report.len() < 40 {
                        let recent: Vec<String> = id_acks
                            .iter()
                            .rev()
                            .take(4)
                            .map(|a| format!("seq {} v{} via {} at {:.3}s", a.seq, a.version, a.instance, a.ack))
                            .collect();
                        report.push(format!(
                            "lost {id} seq {} (v{}, acknowledged via instance {} at {:.3}s): {what} shows current {shown} \
                             (final views {:?}, PostgreSQL (version, current) {:?}; last acks: {})",
                            w.seq,
                            w.version,
                            w.instance,
                            w.ack,
                            views,
                            pg_rows.get(id.as_str()).map(|(v, c, _)| (*v, *c)),
                            recent.join(", ")
                        ));
                    }
                }
            }
        };
        for (i, view) in views.iter().enumerate() {
            let shown = view.map_or(0, |(_, seq)| seq);
            let explained = |w: &Ack| judge.lost_documented(w);
            judge_missing(
                shown,
                &format!("instance {i}"),
                &explained,
                &mut lost_documented,
                &mut lost_violation,
                &mut report,
            );
        }
        let pg_row = pg_rows.get(id).filter(|(_, _, deleted)| !deleted);
        let pg_seq = pg_row.map_or(0, |(_, seq, _)| *seq);
        let pg_explained = |w: &Ack| judge.pg_lost_documented(w);
        judge_missing(
            pg_seq,
            "PostgreSQL",
            &pg_explained,
            &mut pg_lost_documented,
            &mut pg_lost_violation,
            &mut report,
        );
        let first = views[0];
        let pg_view = pg_row.map(|(v, seq, _)| (*v, *seq));
        // PostgreSQL behind the instances only by acknowledged writes it misses as documented.
        let pg_behind_documented = first.is_some_and(|(_, seq)| {
            let mut between = id_acks.iter().filter(|w| w.seq > pg_seq && w.seq <= seq).peekable();
            between.peek().is_some() && between.all(pg_explained)
        });
        let instances_agree = views.iter().all(|v| *v == first);
        if instances_agree && pg_view != first && pg_behind_documented {
            pg_behind += 1;
        } else if !instances_agree || pg_view != first {
            disagree += 1;
            if report.len() < 60 {
                report.push(format!(
                    "tiers disagree on {id}: instances {views:?} (version, current), PostgreSQL {pg_view:?}"
                ));
            }
        }
    }

    let regressions = shared.regressions.lock().unwrap().clone();
    let reg = judge_regressions(&judge, &regressions, &acks, &mut report);
    let counts = shared.counts.lock().unwrap();
    let unexpected_status: u64 =
        counts.other_status.iter().filter(|((kind, s), _)| !(*kind == "write" && *s == 404)).map(|(_, n)| n).sum();
    let status_500: u64 = counts.status_5xx.iter().filter(|((_, s), _)| *s != 503).map(|(_, n)| n).sum();
    let writes_404: u64 = counts.other_status.get(&("write", 404)).copied().unwrap_or(0);

    println!();
    let kills = |t: fn(&Target) -> bool| outages.iter().filter(|o| t(&o.target)).count();
    println!(
        "chaos:       {} faults in {load_end:.1} s: Redis killed {}x, PostgreSQL killed {}x, an instance killed {}x (SIGKILL each, restarted after 0.3-2.8 s)",
        outages.len(),
        kills(|t| *t == Target::Redis),
        kills(|t| *t == Target::Postgres),
        kills(|t| matches!(t, Target::Instance(_)))
    );
    println!();
    println!("| count | value |");
    println!("|---|---:|");
    println!("| writes sent | {} |", counts.writes_sent);
    println!("| writes acknowledged (200/201) | {} |", counts.writes_acked);
    println!("| ids | {} |", all_ids.len());
    println!(
        "| acknowledged writes lost at the end, documented crash window (instance x 3 reads) | {lost_documented} |"
    );
    println!("| acknowledged writes lost at the end, violations (instance x 3 reads) | {lost_violation} |");
    println!("| acknowledged writes missing in PostgreSQL, documented crash window | {pg_lost_documented} |");
    println!("| acknowledged writes missing in PostgreSQL, violations | {pg_lost_violation} |");
    println!("| ids PostgreSQL holds behind the instances, documented crash window | {pg_behind} |");
    println!("| ids whose instances and PostgreSQL disagree at the end (violations) | {disagree} |");
    println!("| final reads that failed | {final_errors} |");
    println!("| reads sent | {} |", counts.reads_sent);
    println!("| reads answered 200/404 | {} |", counts.reads_ok);
    println!(
        "| regressions seen (`current` back: {}, version back only: {}) | {} |",
        reg.seq_regressions, reg.version_rewinds, reg.total
    );
    println!("| - documented (Redis lost data within the persist/crash window) | {} |", reg.documented_crash);
    println!(
        "| - documented (read cache notice window, < 250 ms; largest lag {:.1} ms) | {} |",
        reg.max_cache_lag * 1000.0,
        reg.documented_cache
    );
    println!(
        "| - documented (an instance still reading PostgreSQL just after Redis came back) | {} |",
        reg.documented_recovery
    );
    println!("| - violations | {} |", reg.violations);
    println!("| PATCH answered 404 (record gone; also seen by readers) | {writes_404} |");
    for ((kind, status), n) in &counts.status_5xx {
        println!("| {kind}s answered {status} | {n} |");
    }
    for ((kind, status), n) in counts.other_status.iter().filter(|((kind, s), _)| !(*kind == "write" && *s == 404)) {
        println!("| {kind}s answered {status} (unexpected) | {n} |");
    }
    for ((kind, error), n) in &counts.errors {
        println!("| {kind} errors: {error} | {n} |");
    }
    println!("| ETag not the body's version | {} |", counts.etag_mismatch);
    println!("| bodies without version/current | {} |", counts.bad_body);
    for line in &report {
        println!("  {line}");
    }
    let violations = lost_violation
        + pg_lost_violation
        + disagree
        + final_errors
        + reg.violations
        + status_500
        + unexpected_status
        + counts.etag_mismatch
        + counts.bad_body;
    println!();
    if violations == 0 {
        println!("verdict:     PASS (no violations)");
    } else {
        println!("verdict:     FAIL ({violations} violations)");
    }
    drop(counts);
    for instance in &mut instances {
        instance.terminate();
    }
    drop(instances);
    drop(redis);
    drop(pg);
    Ok(violations == 0)
}

/// Until every instance's /readyz says "ok" (both tiers up, breakers closed).
fn wait_ready(instances: &[Instance], within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    for instance in instances {
        loop {
            if let Some((200, body)) = http_get_raw(instance.port, "/readyz")
                && body.contains(r#""status":"ok""#)
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "instance {} not ready (/readyz) within {within:?}; log {}",
                    instance.index,
                    instance.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match Config::from_env_and_args(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("chaos: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: set-up failed: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
