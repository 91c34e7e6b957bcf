//! Chaos run for progressd (`bench/chaos.sh`, and `tests/chaos.rs` in CI):
//! its own `redis-server`, its own PostgreSQL cluster and three (or
//! `CHAOS_INSTANCES`) progressd instances sharing both (one key prefix, one
//! database), all on free ports, each reaching Redis through its own
//! in-process TCP proxy; writers and readers go through random instances
//! while a chaos loop, one fault at a time, SIGKILLs and restarts Redis,
//! PostgreSQL or an instance, pauses Redis or PostgreSQL (SIGSTOP, then
//! SIGCONT), or cuts one instance off from Redis (its proxy resets or
//! blackholes). At the end it waits past the persist interval and checks
//! that every acknowledged write is readable through every instance and held
//! by PostgreSQL; it also counts the writes refused (503) and the longest
//! refusal window. The definitions it applies are printed in its header (see
//! `HEADER`).
//!
//! ```text
//! cargo run --release --example chaos -- --bin target/release/progressd --seconds 60
//! ```
//!
//! Settings (flags win over the environment): `--bin`/`CHAOS_BIN` (default
//! `target/release/progressd`), `--seconds`/`CHAOS_SECONDS` (60),
//! `--writers`/`CHAOS_WRITERS` (4), `--ids`/`CHAOS_IDS_PER_WRITER` (8),
//! `--readers`/`CHAOS_READERS` (4), `--persist`/`CHAOS_PERSIST_SECONDS` (1),
//! `--seed`/`CHAOS_SEED` (random), `--instances`/`CHAOS_INSTANCES` (3),
//! `--faults`/`CHAOS_FAULTS` (`kill,pause,partition`: which kinds of fault
//! the loop chooses from; `kill` alone is the run before pauses and
//! partitions were added). Exit status 0 when no violation was
//! found, 1 on violations, 2 when the set-up failed.
#![allow(dead_code)]

#[path = "../tests/common/postgres.rs"]
mod postgres;
#[path = "../tests/common/proxy.rs"]
mod proxy;
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{OwnPostgres, free_port, kill_child, signal_child};
use proxy::{Mode, Proxy};
use redis_server::OwnRedis;

/// What the run promises to check, printed before it starts.
pub const HEADER: &str = "\
definitions (from README: Storage, What a crash can lose, Known limits; ARCHITECTURE.md: degraded modes):
  acknowledged write   a PUT/PATCH answered 200/201; its version is the ETag, and its body
                       carries `current` = a per-id sequence number only its one writer uses,
                       so every write of an id is told apart even if versions are reused
  P                    PROGRESS_PERSIST_INTERVAL_SECONDS; S = 3 s of slack (breaker probe, flush)
  fault                one at a time: Redis or PostgreSQL killed (SIGKILL, restarted: a killed
                       Redis comes back empty) or paused (SIGSTOP to redis-server, to the
                       postmaster and its backends, then SIGCONT: nothing lost), an instance
                       killed, or Redis cut off from one instance (its proxy to Redis resets
                       every connection, or blackholes them; then forwards again); its outage
                       is [down, up]. A pause or a cut is an outage of that store like a kill,
                       but only a kill loses data (a Redis kill below means a kill)
  flush deadline(w)    ack(w) + P + S, moved to (end of outage) + P + S by every PostgreSQL
                       outage (kill or pause) that overlaps [ack(w), deadline]
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
  documented, outage   Redis paused or cut off (not killed) from the instance that served the
                       read, the read began in [down, up + S] of that outage, and every w in M was
                       sent before it ended and the read began before flush deadline(w): the
                       instance reads PostgreSQL while another holds w unflushed (README, Known
                       limits, as for a kill, minus the data loss); M empty and `current` back:
                       Redis away from that instance between the two reads (minus P + 2S)
  documented, recovery the read began within S of Redis coming back from a kill, pause or cut
                       (of the read's instance, for a cut; its breaker may not have probed Redis
                       yet, so it still reads PostgreSQL), and every w in M was acknowledged
                       after Redis went down and before its flush deadline (README, Known
                       limits: an instance whose breaker is still open)
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
                       (never acknowledged), timeouts (not acknowledged either)
  refused write        a PUT/PATCH answered 503 (storage_unavailable, write_contention): counted
                       in total and by the fault active when the answer came (Redis down: killed,
                       paused or cut off from an instance; PostgreSQL down: killed or paused; an
                       instance down; none: no fault, split into within S after one ended, and
                       not). Refused connections and timeouts are errors, not refusals
  refusal window       per instance, from the answer of its first 503 to the answer of its next
                       acknowledged write (a window still open when the load ends closes there);
                       longest overall, and longest Redis-only: a window that overlaps a Redis
                       outage [down, up + S] (kill, pause or cut) and no PostgreSQL outage and no
                       kill of its own instance (what issue 20 targets)";

#[derive(Clone, Debug)]
pub struct Config {
    pub bin: PathBuf,
    pub seconds: u64,
    pub writers: usize,
    pub ids_per_writer: usize,
    pub readers: usize,
    pub persist_seconds: u64,
    pub seed: u64,
    pub instances: usize,
    pub faults: Faults,
}

/// Which kinds of fault the chaos loop chooses from.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    pub kill: bool,
    pub pause: bool,
    pub partition: bool,
}

impl Faults {
    fn parse(list: &str) -> Result<Self, String> {
        let mut faults = Self { kill: false, pause: false, partition: false };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "kill" => faults.kill = true,
                "pause" => faults.pause = true,
                "partition" => faults.partition = true,
                other => return Err(format!("CHAOS_FAULTS: {other:?} is not one of kill, pause, partition")),
            }
        }
        if !(faults.kill || faults.pause || faults.partition) {
            return Err("CHAOS_FAULTS: name at least one of kill, pause, partition".into());
        }
        Ok(faults)
    }

    fn names(&self) -> String {
        let names = [(self.kill, "kill"), (self.pause, "pause"), (self.partition, "partition")];
        names.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
    }
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
            instances: num(get("--instances", "CHAOS_INSTANCES"), "CHAOS_INSTANCES", 3)? as usize,
            faults: Faults::parse(&get("--faults", "CHAOS_FAULTS").unwrap_or_else(|| "kill,pause,partition".into()))?,
        };
        if config.writers == 0 || config.ids_per_writer == 0 || config.persist_seconds == 0 || config.instances == 0 {
            return Err("writers, ids per writer, instances and the persist interval must be at least 1".into());
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

/// How a target was taken away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, then started again (a killed Redis comes back empty).
    Kill,
    /// SIGSTOP, then SIGCONT: nothing is lost.
    Pause,
    /// Redis cut off from one instance: its proxy resets every connection
    /// (`blackhole: false`) or lets none of their bytes through.
    Partition { instance: usize, blackhole: bool },
}

#[derive(Clone, Copy, Debug)]
struct Outage {
    target: Target,
    fault: Fault,
    down: f64,
    up: f64,
}

impl Outage {
    /// Whether this is Redis unusable for `instance` (a kill or a pause for
    /// every instance, a cut for the one cut off).
    fn redis_for(&self, instance: usize) -> bool {
        match self.fault {
            Fault::Partition { instance: cut, .. } => self.target == Target::Redis && cut == instance,
            _ => self.target == Target::Redis,
        }
    }

    /// A row label for the report.
    fn label(&self) -> &'static str {
        match (self.target, self.fault) {
            (Target::Redis, Fault::Kill) => "Redis killed",
            (Target::Redis, Fault::Pause) => "Redis paused",
            (Target::Redis, Fault::Partition { blackhole: false, .. }) => "Redis cut off from one instance (reset)",
            (Target::Redis, Fault::Partition { blackhole: true, .. }) => "Redis cut off from one instance (blackhole)",
            (Target::Postgres, Fault::Pause) => "PostgreSQL paused",
            (Target::Postgres, _) => "PostgreSQL killed",
            (Target::Instance(_), _) => "an instance killed",
        }
    }
}

/// What one write got, for the refusal counts and windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Acknowledged,
    Refused,
}

#[derive(Clone, Copy, Debug)]
struct WriteAnswer {
    instance: usize,
    /// When the answer came.
    at: f64,
    answer: Answer,
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
    answers: Mutex<Vec<WriteAnswer>>,
    /// Per id, the writes not acknowledged (refused, failed, timed out): (seq, sent).
    unacked: Mutex<HashMap<String, Vec<(u64, f64)>>>,
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
        let mut acknowledged = false;
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
                        acknowledged = true;
                        shared.answers.lock().unwrap().push(WriteAnswer {
                            instance,
                            at: now,
                            answer: Answer::Acknowledged,
                        });
                        shared.acks.lock().unwrap().entry(id.clone()).or_default().push(Ack {
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
                    (503, _) => {
                        *counts.status_5xx.entry(("write", 503)).or_default() += 1;
                        drop(counts);
                        shared.answers.lock().unwrap().push(WriteAnswer { instance, at: now, answer: Answer::Refused });
                    }
                    (s, _) if s >= 500 => *counts.status_5xx.entry(("write", s)).or_default() += 1,
                    (s, _) => *counts.other_status.entry(("write", s)).or_default() += 1,
                }
            }
            Err(e) => *shared.counts.lock().unwrap().errors.entry(("write", classify_error(&e))).or_default() += 1,
        }
        if !acknowledged {
            shared.unacked.lock().unwrap().entry(id).or_default().push((s, sent));
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

/// What the chaos loop acts on.
struct Cast<'a> {
    redis: &'a mut OwnRedis,
    pg: &'a mut OwnPostgres,
    instances: &'a mut [Instance],
    /// One per instance, between it and Redis.
    proxies: &'a [Proxy],
    runtime: &'a tokio::runtime::Runtime,
}

/// The pids of the processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            std::fs::read_to_string(format!("/proc/{child}/stat")).ok().is_some_and(|stat| {
                stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

fn send_signal(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill").arg(signal).args(pids.iter().map(u32::to_string)).status();
}

/// SIGSTOP to `pid`, then (it forks no more) to its children: a process
/// and, for PostgreSQL, its backends. Returns the pids stopped, parent first.
fn pause(pid: u32) -> Vec<u32> {
    send_signal("-STOP", &[pid]);
    let mut stopped = vec![pid];
    stopped.extend(children_of(pid));
    send_signal("-STOP", &stopped[1..]);
    stopped
}

/// SIGCONT to what [`pause`] stopped, children first.
fn resume(stopped: &[u32]) {
    let mut order = stopped.to_vec();
    order.reverse();
    send_signal("-CONT", &order);
}

/// The chaos loop (blocking): one fault at a time, a while down, back, a
/// while up. Returns the outages.
fn chaos_loop(
    shared: &Shared,
    cast: &mut Cast<'_>,
    faults: Faults,
    deadline: f64,
    rng: &mut fastrand::Rng,
) -> Result<Vec<Outage>, String> {
    let mut outages = Vec::new();
    let n = cast.instances.len();
    loop {
        let pause_for = rng.f64() * 2.0 + 1.0;
        if shared.now() + pause_for >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs_f64(pause_for));
        // A target, then one of the faults chosen for it.
        let mut choices: Vec<(Target, Vec<Fault>)> = Vec::new();
        let partition = Fault::Partition { instance: rng.usize(..n), blackhole: rng.bool() };
        let redis_faults: Vec<Fault> =
            [(faults.kill, Fault::Kill), (faults.pause, Fault::Pause), (faults.partition, partition)]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| *f)
                .collect();
        choices.push((Target::Redis, redis_faults));
        let pg_faults: Vec<Fault> = [(faults.kill, Fault::Kill), (faults.pause, Fault::Pause)]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, f)| *f)
            .collect();
        if !pg_faults.is_empty() {
            choices.push((Target::Postgres, pg_faults));
        }
        if faults.kill {
            choices.push((Target::Instance(rng.usize(..n)), vec![Fault::Kill]));
        }
        let (target, options) = &choices[rng.usize(..choices.len())];
        let (target, fault) = (*target, options[rng.usize(..options.len())]);
        let down_for = rng.f64() * 2.5 + 0.3;
        let down = shared.now();
        let mut stopped = Vec::new();
        match (target, fault) {
            (Target::Redis, Fault::Kill) => cast.redis.stop(),
            (Target::Redis, Fault::Pause) => stopped = cast.redis.pid().map(pause).unwrap_or_default(),
            (Target::Redis, Fault::Partition { instance, blackhole }) => {
                let mode = if blackhole { Mode::Blackhole } else { Mode::Reset };
                cast.runtime.block_on(cast.proxies[instance].set_mode(mode));
            }
            (Target::Postgres, Fault::Pause) => stopped = cast.pg.pid().map(pause).unwrap_or_default(),
            (Target::Postgres, _) => cast.pg.kill(),
            (Target::Instance(i), _) => cast.instances[i].kill(),
        }
        std::thread::sleep(Duration::from_secs_f64(down_for));
        match (target, fault) {
            (Target::Redis, Fault::Kill) => cast.redis.start_again(),
            (Target::Redis, Fault::Partition { instance, .. }) => {
                cast.runtime.block_on(cast.proxies[instance].set_mode(Mode::Forward));
            }
            (_, Fault::Pause) => resume(&stopped),
            (Target::Postgres, _) => cast.pg.start_again(),
            (Target::Instance(i), _) => cast.instances[i].start()?,
        }
        let up = shared.now();
        let outage = Outage { target, fault, down, up };
        let whom = match fault {
            Fault::Partition { instance, .. } => format!(" (instance {instance})"),
            _ => match target {
                Target::Instance(i) => format!(" ({i})"),
                _ => String::new(),
            },
        };
        eprintln!("chaos: {}{whom} at {down:.2}s, back at {up:.2}s", outage.label());
        outages.push(outage);
    }
    Ok(outages)
}

// --- judging ------------------------------------------------------------------

struct Judge {
    outages: Vec<Outage>,
    p: f64,
}

const SLACK: f64 = 3.0;
/// The writers' and readers' request timeout, in seconds.
const CLIENT_TIMEOUT: f64 = 5.0;
const CACHE_WINDOW: f64 = 0.25;

impl Judge {
    /// When Redis was killed (and lost everything): pauses and cuts lose nothing.
    fn redis_kills(&self) -> impl Iterator<Item = f64> + '_ {
        self.outages.iter().filter(|o| o.target == Target::Redis && o.fault == Fault::Kill).map(|o| o.down)
    }

    /// When Redis went away in any way (kill, pause, a cut of any instance).
    fn redis_outages(&self) -> impl Iterator<Item = &Outage> + '_ {
        self.outages.iter().filter(|o| o.target == Target::Redis)
    }

    /// When a write acknowledged at `ack` is in PostgreSQL at the latest,
    /// every PostgreSQL outage (kill or pause) pushing it on.
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

    /// A missed write explained by Redis paused or cut off (not killed)
    /// from the instance that served the read: it reads PostgreSQL, which
    /// another instance's backlog has not reached yet. The read began during
    /// the outage (or within SLACK after), `w` was sent before it ended, and
    /// the read began before `w` was due in PostgreSQL.
    fn missed_in_outage(&self, w: &Ack, read_start: f64, read_instance: usize) -> bool {
        self.outages.iter().filter(|o| o.fault != Fault::Kill && o.redis_for(read_instance)).any(|o| {
            o.down <= read_start
                && read_start <= o.up + SLACK
                && w.sent <= o.up
                && read_start < self.flush_deadline(w.ack)
        })
    }

    /// A missed write explained by an instance that still reads PostgreSQL
    /// after Redis came back (its breaker has not probed yet): the read
    /// began within SLACK of Redis returning (for a cut, to the read's
    /// instance), and `w` came after Redis went down and was not yet due in
    /// PostgreSQL.
    fn missed_in_recovery(&self, w: &Ack, read_start: f64, read_instance: usize) -> bool {
        self.outages.iter().filter(|o| o.redis_for(read_instance)).any(|o| {
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

    /// An unacknowledged write sent while (or up to the client's timeout
    /// before) Redis was paused or blackholed from the instance: Redis may
    /// run it when it resumes, after the request was answered 503 or timed
    /// out, so it is in Redis and no instance's backlog.
    fn late_in_redis(&self, sent: f64, instance: usize) -> bool {
        self.outages.iter().any(|o| {
            let held = match o.fault {
                Fault::Pause => o.target == Target::Redis,
                Fault::Partition { blackhole, .. } => blackhole && o.redis_for(instance),
                Fault::Kill => false,
            };
            held && o.down - CLIENT_TIMEOUT <= sent && sent <= o.up
        })
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
    documented_outage: u64,
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
        // Redis gone in any way between the reads (or just before), for the instance that served the second.
        let redis_away_between = judge
            .redis_outages()
            .any(|o| o.redis_for(a.instance) && o.up + SLACK >= b.start - judge.p - SLACK && o.down <= a.end);
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
        // M empty (only writes still unacknowledged when the read began were
        // missed) and `current` went back: Redis away in any way explains it,
        // as a kill does. A version going back alone needs a kill.
        let outage = if missed.is_empty() {
            a.seq < b.seq && redis_away_between
        } else {
            missed.iter().all(|w| judge.missed_in_outage(w, a.start, a.instance))
        };
        let recovering = !missed.is_empty() && missed.iter().all(|w| judge.missed_in_recovery(w, a.start, a.instance));
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
        } else if outage {
            counts.documented_outage += 1;
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

// --- refusals ------------------------------------------------------------------

/// A refusal window: from the answer of an instance's first 503 to the answer
/// of its next acknowledged write.
#[derive(Clone, Copy, Debug)]
struct Window {
    instance: usize,
    start: f64,
    end: f64,
    /// No acknowledged write through the instance before the load ended.
    open_at_end: bool,
}

impl Window {
    fn length(&self) -> f64 {
        self.end - self.start
    }

    fn describe(&self) -> String {
        format!(
            "{:.3} s (instance {}, {:.2}-{:.2} s{})",
            self.length(),
            self.instance,
            self.start,
            self.end,
            if self.open_at_end { ", open at the end of the load" } else { "" }
        )
    }
}

/// The four groups refused writes are counted in, by the fault active when the answer came.
const REFUSAL_GROUPS: [&str; 4] = ["Redis down", "PostgreSQL down", "an instance down", "none"];

#[derive(Default)]
struct Refusals {
    total: u64,
    /// (group, detail) -> count.
    by_fault: BTreeMap<(usize, String), u64>,
    windows: Vec<Window>,
    longest: Option<Window>,
    longest_redis_only: Option<Window>,
}

impl Refusals {
    fn group(&self, group: usize) -> u64 {
        self.by_fault.iter().filter(|((g, _), _)| *g == group).map(|(_, n)| n).sum()
    }
}

fn refusals(answers: &[WriteAnswer], outages: &[Outage], load_end: f64) -> Refusals {
    let mut out = Refusals::default();
    let mut answers = answers.to_vec();
    answers.sort_by(|a, b| a.at.total_cmp(&b.at));
    let instances = answers.iter().map(|a| a.instance + 1).max().unwrap_or(0);
    let mut open: Vec<Option<f64>> = vec![None; instances];
    for a in &answers {
        match a.answer {
            Answer::Refused => {
                out.total += 1;
                let key = match outages.iter().find(|o| o.down <= a.at && a.at <= o.up) {
                    Some(o) => {
                        let group = match o.target {
                            Target::Redis => 0,
                            Target::Postgres => 1,
                            Target::Instance(_) => 2,
                        };
                        (group, o.label().to_string())
                    }
                    None => match outages.iter().rfind(|o| o.up < a.at && a.at <= o.up + SLACK) {
                        Some(o) => (3, format!("within S after a fault ended: {}", o.label())),
                        None => (3, "no fault for S before".to_string()),
                    },
                };
                *out.by_fault.entry(key).or_default() += 1;
                open[a.instance].get_or_insert(a.at);
            }
            Answer::Acknowledged => {
                if let Some(start) = open[a.instance].take() {
                    out.windows.push(Window { instance: a.instance, start, end: a.at, open_at_end: false });
                }
            }
        }
    }
    for (instance, start) in open.iter().enumerate() {
        if let Some(start) = start {
            out.windows.push(Window { instance, start: *start, end: load_end.max(*start), open_at_end: true });
        }
    }
    let overlaps = |w: &Window, o: &Outage, until: f64| o.down <= w.end && until >= w.start;
    let redis_only = |w: &Window| {
        outages.iter().any(|o| o.redis_for(w.instance) && overlaps(w, o, o.up + SLACK))
            && !outages.iter().any(|o| {
                (o.target == Target::Postgres || o.target == Target::Instance(w.instance)) && overlaps(w, o, o.up)
            })
    };
    let longest = |ws: &mut dyn Iterator<Item = &Window>| ws.copied().max_by(|a, b| a.length().total_cmp(&b.length()));
    out.longest = longest(&mut out.windows.iter());
    out.longest_redis_only = longest(&mut out.windows.iter().filter(|w| redis_only(w)));
    out
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
    // Each instance reaches Redis through a proxy of its own, which the chaos loop can cut.
    let proxies: Vec<Proxy> = (0..config.instances).map(|_| runtime.block_on(Proxy::start(redis.addr()))).collect();
    let prefix = format!("chaos-{}:", unique_suffix());
    let env = vec![
        ("DATABASE_URL".to_string(), pg.url()),
        ("PROGRESS_KEY_PREFIX".to_string(), prefix.clone()),
        ("PROGRESS_PERSIST_INTERVAL_SECONDS".to_string(), config.persist_seconds.to_string()),
        ("PROGRESS_LOG_LEVEL".to_string(), "warn".to_string()),
        ("PROGRESS_LOG_FORMAT".to_string(), "pretty".to_string()),
    ];
    let mut instances: Vec<Instance> = (0..config.instances)
        .map(|index| Instance {
            index,
            port: free_port(),
            bin: config.bin.clone(),
            env: [vec![("REDIS_URL".to_string(), format!("redis://127.0.0.1:{}", proxies[index].port()))], env.clone()]
                .concat(),
            log: workdir.join(format!("progressd-{index}.log")),
            child: None,
        })
        .collect();
    for instance in &mut instances {
        instance.start()?;
    }
    wait_ready(&instances, Duration::from_secs(30))?;

    println!(
        "setup:       redis 127.0.0.1:{} (through proxies on {:?}), postgres 127.0.0.1:{} ({}), {} instance(s) on {:?}, key prefix {prefix}",
        redis.port(),
        proxies.iter().map(Proxy::port).collect::<Vec<_>>(),
        pg.port(),
        pg.dir().display(),
        instances.len(),
        instances.iter().map(|i| i.port).collect::<Vec<_>>()
    );
    println!("faults:      {} (CHAOS_FAULTS), binary {}", config.faults.names(), config.bin.display());
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
        answers: Mutex::new(Vec::new()),
        unacked: Mutex::new(HashMap::new()),
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
    let outages = {
        let mut cast =
            Cast { redis: &mut redis, pg: &mut pg, instances: &mut instances, proxies: &proxies, runtime: &runtime };
        chaos_loop(&shared, &mut cast, config.faults, deadline, &mut rng)?
    };
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
    // Acknowledged writes lost (violations), each counted once however many tiers miss it.
    let mut lost_distinct = 0u64;
    let mut disagree = 0u64;
    let mut pg_behind = 0u64;
    let mut pg_behind_late_count = 0u64;
    let unacked = shared.unacked.lock().unwrap().clone();
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
        lost_distinct += id_acks
            .iter()
            .filter(|w| {
                let by_instance =
                    views.iter().any(|v| v.map_or(0, |(_, seq)| seq) < w.seq) && !judge.lost_documented(w);
                by_instance || (pg_seq < w.seq && !judge.pg_lost_documented(w))
            })
            .count() as u64;
        let first = views[0];
        let pg_view = pg_row.map(|(v, seq, _)| (*v, *seq));
        // PostgreSQL behind the instances only by acknowledged writes it misses as documented.
        let pg_behind_documented = first.is_some_and(|(_, seq)| {
            let mut between = id_acks.iter().filter(|w| w.seq > pg_seq && w.seq <= seq).peekable();
            between.peek().is_some() && between.all(pg_explained)
        });
        // PostgreSQL behind only by writes never acknowledged that a paused
        // (or blackholed) Redis ran when it resumed: no backlog holds them.
        let pg_behind_late = first.is_some_and(|(_, seq)| {
            seq > pg_seq
                && !id_acks.iter().any(|w| w.seq > pg_seq && w.seq <= seq)
                && (pg_seq + 1..=seq).all(|s| {
                    unacked.get(id).is_some_and(|u| {
                        u.iter()
                            .any(|(useq, sent)| *useq == s && (0..views.len()).any(|i| judge.late_in_redis(*sent, i)))
                    })
                })
        });
        let instances_agree = views.iter().all(|v| *v == first);
        if instances_agree && pg_view != first && pg_behind_documented {
            pg_behind += 1;
        } else if instances_agree && pg_view != first && pg_behind_late {
            pg_behind_late_count += 1;
            if report.len() < 60 {
                report.push(format!(
                    "PostgreSQL behind on {id} by unacknowledged writes only: instances {first:?} (version, current), PostgreSQL {pg_view:?}"
                ));
            }
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

    let refused = refusals(&shared.answers.lock().unwrap(), &outages, load_end);

    println!();
    let mut by_label: BTreeMap<&'static str, usize> = BTreeMap::new();
    for o in &outages {
        *by_label.entry(o.label()).or_default() += 1;
    }
    let listed: Vec<String> = by_label.iter().map(|(label, n)| format!("{label} {n}x")).collect();
    println!(
        "chaos:       {} faults in {load_end:.1} s: {} (each back after 0.3-2.8 s)",
        outages.len(),
        if listed.is_empty() { "none".to_string() } else { listed.join(", ") }
    );
    println!();
    println!("| count | value |");
    println!("|---|---:|");
    println!("| writes sent | {} |", counts.writes_sent);
    println!("| writes acknowledged (200/201) | {} |", counts.writes_acked);
    println!("| ids | {} |", all_ids.len());
    println!(
        "| acknowledged writes lost at the end, documented crash window (counted once per instance read) | {lost_documented} |"
    );
    println!("| acknowledged writes lost at the end, violations (counted once per instance read) | {lost_violation} |");
    println!("| acknowledged writes lost (violations, each write once, whichever tiers miss it) | {lost_distinct} |");
    println!("| acknowledged writes missing in PostgreSQL, documented crash window | {pg_lost_documented} |");
    println!("| acknowledged writes missing in PostgreSQL, violations | {pg_lost_violation} |");
    println!("| ids PostgreSQL holds behind the instances, documented crash window | {pg_behind} |");
    println!(
        "| ids PostgreSQL holds behind the instances by unacknowledged writes only (a paused Redis ran them on SIGCONT; finding, not counted as a violation) | {pg_behind_late_count} |"
    );
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
        "| - documented (Redis paused or cut off: the instance read PostgreSQL before another's backlog reached it) | {} |",
        reg.documented_outage
    );
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
    println!("| writes refused (503) | {} |", refused.total);
    for (g, group) in REFUSAL_GROUPS.iter().enumerate() {
        println!("| - while {group} | {} |", refused.group(g));
        for ((_, detail), n) in refused.by_fault.iter().filter(|((fg, _), _)| *fg == g) {
            println!("|   - {detail} | {n} |");
        }
    }
    println!(
        "| refusal windows (per instance: first 503 to its next acknowledged write) | {} |",
        refused.windows.len()
    );
    let describe = |w: Option<Window>| w.map_or_else(|| "none".to_string(), |w| w.describe());
    println!("| longest refusal window | {} |", describe(refused.longest));
    println!("| longest refusal window while only Redis was down | {} |", describe(refused.longest_redis_only));
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
    let secs = |w: Option<Window>| w.map_or_else(|| "-".to_string(), |w| format!("{:.3} s", w.length()));
    println!(
        "summary:     {} instance(s), faults {}, seed {}: acknowledged {}, lost {} (+ {} instance reads / PostgreSQL rows missing writes in the documented crash window), refused {}, longest refusal window {}, Redis-only {}",
        instances.len(),
        config.faults.names(),
        config.seed,
        counts.writes_acked,
        lost_distinct,
        lost_documented + pg_lost_documented,
        refused.total,
        secs(refused.longest),
        secs(refused.longest_redis_only)
    );
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
