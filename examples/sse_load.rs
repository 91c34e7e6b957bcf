//! Load generator for `GET /progress/{id}/events` (Server-Sent Events), used
//! by `bench/sse.sh`; see bench/README.md, "Live updates (SSE)".
//!
//! One plain HTTP/1.1 connection (`tokio::net::TcpStream`) per subscriber;
//! the body is de-chunked and only the `id:` and `event:` lines are looked
//! at, so that ten thousand subscribers fit in one small process. Writes go
//! over keep-alive connections of the same process, so a PUT's send time and
//! an event's arrival time are read from the same monotonic clock, and events
//! are matched to writes by (record, version).
//!
//! ```text
//! sse_load --mode delay --url http://127.0.0.1:8080 --subscribers 1000 --records 100 --writes 200 --rate 20
//! sse_load --mode hold  --url http://127.0.0.1:8080 --subscribers 10000 --records 1000 --server-pid 1234
//! ```
//!
//! * `delay`: seeds the records, connects the subscribers (subscriber `j`
//!   watches record `j % records`), waits for every first event, then sends
//!   `--writes` PUTs at `--rate` per second, round-robin over the records, and
//!   reports the delay from just before each PUT is written to the socket to
//!   the read that brought its event to each subscriber of that record
//!   (timestamped before any parsing), plus how many events were expected and
//!   received.
//! * `hold`: seeds the records, samples the server's VmRSS/VmHWM and open
//!   files (`/proc/<pid>`), connects the subscribers, samples, updates every
//!   record once and waits for every subscriber to get the event, samples,
//!   disconnects everyone, waits for the server to close its side, samples.
//!
//! Prints progress to stderr, a table to stdout and one
//! `SSE_RESULT key=value …` line for scripts. Exit status 1 when a
//! subscriber or a write failed, 2 on bad arguments or set-up errors.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

const USAGE: &str = "\
usage: sse_load --mode delay|hold --url http://HOST:PORT [options]
  --url URL                 instance the subscribers connect to
  --write-url URL           instance the PUTs go to (default: --url)
  --subscribers N           open event streams (default 1000)
  --records N               records they are spread over, round-robin (default 1)
  --writes N                delay: PUTs to send, round-robin over the records (default 200)
  --rate N                  delay: PUTs per second (default 20)
  --grace-ms N              delay: longest wait for events after the last PUT (default 3000)
  --id-prefix S             record ids are S-0, S-1, ... (default sse-<pid>)
  --server-pid PID          server to sample in /proc (hold: required; delay: CPU time); repeatable
  --connect-concurrency N   connections being opened at once (default 200)
  --connect-timeout-s N     longest wait for every subscriber's first event (default 120)
  --threads N               runtime worker threads (default: available CPUs)
  --label S                 name of the scenario in the output (default: the mode)";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Delay,
    Hold,
}

struct Args {
    mode: Mode,
    url: String,
    write_url: String,
    subscribers: usize,
    records: usize,
    writes: usize,
    rate: f64,
    grace: Duration,
    id_prefix: String,
    server_pids: Vec<u32>,
    connect_concurrency: usize,
    connect_timeout: Duration,
    threads: usize,
    label: String,
}

fn parse_args() -> Result<Args, String> {
    let mut mode = None;
    let mut url = None;
    let mut write_url = None;
    let mut subscribers = 1000usize;
    let mut records = 1usize;
    let mut writes = 200usize;
    let mut rate = 20.0f64;
    let mut grace_ms = 3000u64;
    let mut id_prefix = format!("sse-{}", std::process::id());
    let mut server_pids = Vec::new();
    let mut connect_concurrency = 200usize;
    let mut connect_timeout_s = 120u64;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut label = None;

    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: not a number: {v:?}"))
        }
        match flag.as_str() {
            "--mode" => {
                mode = Some(match value.as_str() {
                    "delay" => Mode::Delay,
                    "hold" => Mode::Hold,
                    _ => return Err(format!("--mode must be delay or hold, not {value:?}")),
                })
            }
            "--url" => url = Some(value),
            "--write-url" => write_url = Some(value),
            "--subscribers" => subscribers = num(&flag, &value)?,
            "--records" => records = num(&flag, &value)?,
            "--writes" => writes = num(&flag, &value)?,
            "--rate" => rate = num(&flag, &value)?,
            "--grace-ms" => grace_ms = num(&flag, &value)?,
            "--id-prefix" => id_prefix = value,
            "--server-pid" => server_pids.push(num(&flag, &value)?),
            "--connect-concurrency" => connect_concurrency = num(&flag, &value)?,
            "--connect-timeout-s" => connect_timeout_s = num(&flag, &value)?,
            "--threads" => threads = num(&flag, &value)?,
            "--label" => label = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let mode = mode.ok_or("--mode is required")?;
    let url = url.ok_or("--url is required")?;
    if records == 0 || subscribers == 0 || connect_concurrency == 0 || threads == 0 {
        return Err("--records, --subscribers, --connect-concurrency and --threads must be at least 1".into());
    }
    if subscribers < records {
        return Err("--subscribers must be at least --records (every record has a subscriber)".into());
    }
    if mode == Mode::Delay && (writes == 0 || rate.is_nan() || rate <= 0.0) {
        return Err("--writes and --rate must be positive".into());
    }
    if mode == Mode::Hold && server_pids.is_empty() {
        return Err("--mode hold needs --server-pid (whose memory to sample)".into());
    }
    Ok(Args {
        mode,
        write_url: write_url.unwrap_or_else(|| url.clone()),
        url,
        subscribers,
        records,
        writes,
        rate,
        grace: Duration::from_millis(grace_ms),
        id_prefix,
        server_pids,
        connect_concurrency,
        connect_timeout: Duration::from_secs(connect_timeout_s),
        threads,
        label: label.unwrap_or_else(|| if mode == Mode::Delay { "delay" } else { "hold" }.into()),
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("sse_load: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Each subscriber is one socket; writers and /proc reads need a few more.
    if let Some(limit) = open_files_limit() {
        let needed = args.subscribers as u64 + 64;
        if limit < needed {
            eprintln!(
                "sse_load: the open-files limit is {limit}, {} subscribers need at least {needed}; raise it (ulimit -n)",
                args.subscribers
            );
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sse_load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sse_load: {e}");
            ExitCode::from(2)
        }
    }
}

// --- targets -------------------------------------------------------------------

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    /// `host:port`, for the Host header.
    authority: Arc<str>,
}

async fn target(url: &str) -> Result<Target, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("only http:// URLs are supported, not {url:?}"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || !rest.trim_start_matches(authority).trim_matches('/').is_empty() {
        return Err(format!("the URL must be http://HOST:PORT with no path, not {url:?}"));
    }
    let with_port = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    let addr = tokio::net::lookup_host(with_port.as_str())
        .await
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    Ok(Target { addr, authority: authority.into() })
}

fn record_id(prefix: &str, record: usize) -> String {
    format!("{prefix}-{record}")
}

// --- a small HTTP/1.1 client for the writes --------------------------------------

struct HttpConn {
    target: Target,
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

impl HttpConn {
    async fn connect(target: &Target) -> Result<Self, String> {
        let stream = TcpStream::connect(target.addr).await.map_err(|e| format!("connect {}: {e}", target.authority))?;
        let _ = stream.set_nodelay(true);
        Ok(Self { target: target.clone(), stream, buf: Vec::with_capacity(8192) })
    }

    /// Sends one request; returns the response and the instant just before
    /// the request was written to the socket.
    async fn request(&mut self, method: &str, path: &str, body: &str) -> Result<(Response, Instant), String> {
        let mut req = String::with_capacity(200 + body.len());
        let _ = write!(
            req,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.target.authority,
            body.len()
        );
        let sent = Instant::now();
        self.stream.write_all(req.as_bytes()).await.map_err(|e| format!("{method} {path}: write: {e}"))?;
        let response = self.read_response().await.map_err(|e| format!("{method} {path}: {e}"))?;
        Ok((response, sent))
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn read_response(&mut self) -> Result<Response, String> {
        let header_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = parse_head(&self.buf[..header_end])?;
        self.buf.drain(..header_end);
        let body = if head.chunked {
            let mut dechunker = Dechunker::default();
            let mut body = Vec::new();
            loop {
                let used = dechunker.feed(&self.buf, &mut |b| body.extend_from_slice(b))?;
                self.buf.drain(..used);
                if dechunker.done() {
                    break body;
                }
                self.fill().await?;
            }
        } else {
            let len = head.content_length.unwrap_or(0);
            while self.buf.len() < len {
                self.fill().await?;
            }
            self.buf.drain(..len).collect()
        };
        Ok(Response { status: head.status, body })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok();
        }
    }
    Ok(Head { status, chunked, content_length })
}

/// The `"version":N` of a record's JSON.
fn version_of(body: &[u8]) -> Option<u64> {
    let at = find(body, b"\"version\":")? + b"\"version\":".len();
    let digits: &[u8] = &body[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// A chunked transfer-coding decoder that can be fed any split of the bytes.
#[derive(Clone, Copy, Default)]
enum Dechunker {
    /// Reading the hex size (and ignoring any extension) up to CR.
    #[default]
    Size,
    SizeHex(u64),
    SizeExt(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Done,
}

impl Dechunker {
    fn done(&self) -> bool {
        matches!(self, Dechunker::Done)
    }

    /// Decodes from `input`, handing payload slices to `out`; returns how many
    /// bytes of `input` it consumed (all of them unless the last chunk ended).
    fn feed(&mut self, input: &[u8], out: &mut impl FnMut(&[u8])) -> Result<usize, String> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            *self = match *self {
                Dechunker::Done => return Ok(i),
                Dechunker::Size | Dechunker::SizeHex(_) => {
                    let so_far = if let Dechunker::SizeHex(v) = *self { v } else { 0 };
                    match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                            Dechunker::SizeHex(so_far.checked_mul(16).ok_or("chunk size overflows")? + digit)
                        }
                        b';' | b' ' | b'\t' if matches!(self, Dechunker::SizeHex(_)) => Dechunker::SizeExt(so_far),
                        b'\r' if matches!(self, Dechunker::SizeHex(_)) => Dechunker::SizeLf(so_far),
                        _ => return Err(format!("bad chunk size byte {b:#04x}")),
                    }
                }
                Dechunker::SizeExt(v) => {
                    if b == b'\r' {
                        Dechunker::SizeLf(v)
                    } else {
                        Dechunker::SizeExt(v)
                    }
                }
                Dechunker::SizeLf(v) => {
                    if b != b'\n' {
                        return Err("chunk size line without LF".into());
                    }
                    // The last chunk: trailers are not expected from this server.
                    if v == 0 { Dechunker::Done } else { Dechunker::Data(v) }
                }
                Dechunker::Data(left) => {
                    let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    out(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    *self = if left == 0 { Dechunker::DataCr } else { Dechunker::Data(left) };
                    continue;
                }
                Dechunker::DataCr => {
                    if b != b'\r' {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    Dechunker::DataLf
                }
                Dechunker::DataLf => {
                    if b != b'\n' {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    Dechunker::Size
                }
            };
            i += 1;
        }
        Ok(i)
    }
}

// --- the event-stream parser -------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Message,
    Progress,
    Deleted,
    Other,
}

enum Ev {
    Progress(u64),
    Deleted,
    Comment,
}

/// Keeps only the first bytes of each line: enough for `id:` and `event:`;
/// the `data:` line (the whole record) is skipped over, not copied.
struct SseParser {
    line: [u8; 40],
    len: usize,
    id: Option<u64>,
    kind: Kind,
}

impl SseParser {
    fn new() -> Self {
        Self { line: [0; 40], len: 0, id: None, kind: Kind::Message }
    }

    fn feed(&mut self, mut input: &[u8], out: &mut impl FnMut(Ev)) {
        while !input.is_empty() {
            let (part, rest, eol) = match input.iter().position(|&b| b == b'\n') {
                Some(i) => (&input[..i], &input[i + 1..], true),
                None => (input, &input[input.len()..], false),
            };
            let keep = part.len().min(self.line.len().saturating_sub(self.len));
            self.line[self.len..self.len + keep].copy_from_slice(&part[..keep]);
            // `len` counts the whole line (capped), so an empty line is told apart.
            self.len = (self.len + part.len()).min(self.line.len());
            if eol {
                self.line_done(out);
            }
            input = rest;
        }
    }

    fn line_done(&mut self, out: &mut impl FnMut(Ev)) {
        let mut line = &self.line[..self.len];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if line.is_empty() {
            match (self.kind, self.id) {
                (Kind::Progress, Some(v)) => out(Ev::Progress(v)),
                (Kind::Deleted, _) => out(Ev::Deleted),
                _ => {}
            }
            self.id = None;
            self.kind = Kind::Message;
        } else if line[0] == b':' {
            out(Ev::Comment);
        } else if let Some(v) = field(line, b"id") {
            self.id = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
        } else if let Some(v) = field(line, b"event") {
            self.kind = match v {
                b"progress" => Kind::Progress,
                b"deleted" => Kind::Deleted,
                _ => Kind::Other,
            };
        }
        self.len = 0;
    }
}

fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

// --- subscribers -------------------------------------------------------------------

#[derive(Default)]
struct Counters {
    /// Subscribers that received their first event.
    ready: AtomicUsize,
    /// Progress events received, first ones included.
    events: AtomicU64,
    heartbeats: AtomicU64,
    deleted: AtomicU64,
    failed: AtomicUsize,
    /// Streams the server ended (it should not, in these runs).
    ended: AtomicUsize,
}

struct SubResult {
    record: usize,
    /// (version, arrival) of each progress event, when asked to keep them.
    events: Vec<(u64, Instant)>,
    error: Option<String>,
}

struct SubSpec {
    target: Target,
    record: usize,
    path: String,
    keep_events: bool,
}

async fn subscriber(
    spec: SubSpec,
    counters: Arc<Counters>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let mut result = SubResult { record: spec.record, events: Vec::new(), error: None };
    let permit = gate.acquire_owned().await.ok();
    let outcome = tokio::select! {
        r = stream_events(&spec, &counters, permit, &mut result.events) => r,
        _ = stop.wait_for(|s| *s) => Ok(()),
    };
    if let Err(e) = outcome {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        result.error = Some(e);
    }
    result
}

/// Reads one stream until it ends or fails (or is dropped by the caller).
async fn stream_events(
    spec: &SubSpec,
    counters: &Counters,
    mut permit: Option<tokio::sync::OwnedSemaphorePermit>,
    events: &mut Vec<(u64, Instant)>,
) -> Result<(), String> {
    let mut stream = TcpStream::connect(spec.target.addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let request =
        format!("GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n", spec.path, spec.target.authority);
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;

    let mut buf = vec![0u8; 4096];
    let mut head: Vec<u8> = Vec::new();
    let mut chunked = None;
    let mut dechunker = Dechunker::default();
    let mut parser = SseParser::new();
    let mut got_first = false;
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        // Timestamped before anything else is done with the bytes.
        let at = Instant::now();
        if n == 0 {
            counters.ended.fetch_add(1, Ordering::Relaxed);
            return Err(if chunked.is_some() {
                "the server closed the stream".into()
            } else {
                "the server closed the connection before answering".into()
            });
        }
        let mut data = &buf[..n];
        let is_chunked = match chunked {
            Some(c) => c,
            None => {
                head.extend_from_slice(data);
                let Some(end) = find(&head, b"\r\n\r\n") else {
                    if head.len() > 16384 {
                        return Err("response head too long".into());
                    }
                    continue;
                };
                let parsed = parse_head(&head[..end + 4])?;
                if parsed.status != 200 {
                    return Err(format!("GET {}: status {}", spec.path, parsed.status));
                }
                chunked = Some(parsed.chunked);
                // What followed the head in this read.
                let consumed_before = head.len() - n;
                data = &buf[(end + 4 - consumed_before)..n];
                head = Vec::new();
                parsed.chunked
            }
        };
        let mut on_event = |ev: Ev| match ev {
            Ev::Progress(version) => {
                counters.events.fetch_add(1, Ordering::Relaxed);
                if spec.keep_events {
                    events.push((version, at));
                }
                if !got_first {
                    got_first = true;
                    counters.ready.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ev::Deleted => {
                counters.deleted.fetch_add(1, Ordering::Relaxed);
            }
            Ev::Comment => {
                counters.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
        };
        if is_chunked {
            dechunker.feed(data, &mut |payload| parser.feed(payload, &mut on_event))?;
            if dechunker.done() {
                counters.ended.fetch_add(1, Ordering::Relaxed);
                return Err("the server ended the stream".into());
            }
        } else {
            parser.feed(data, &mut on_event);
        }
        if got_first {
            // Connected: let the next subscriber connect.
            drop(permit.take());
        }
    }
}

struct Subscribers {
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<SubResult>>,
    /// How long until every subscriber had its first event.
    connect_time: Duration,
}

/// Opens `n` streams, subscriber `j` on record `j % records`, and waits for
/// every first event.
async fn open_subscribers(args: &Args, target: &Target, keep_events: bool) -> Result<Subscribers, String> {
    let counters = Arc::new(Counters::default());
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let (stop, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(args.subscribers);
    for j in 0..args.subscribers {
        let record = j % args.records;
        let spec = SubSpec {
            target: target.clone(),
            record,
            path: format!("/progress/{}/events", record_id(&args.id_prefix, record)),
            keep_events,
        };
        handles.push(tokio::spawn(subscriber(spec, counters.clone(), gate.clone(), stop_rx.clone())));
    }
    let mut last_report = Instant::now();
    loop {
        let ready = counters.ready.load(Ordering::Relaxed);
        let failed = counters.failed.load(Ordering::Relaxed);
        if ready + failed >= args.subscribers {
            break;
        }
        if start.elapsed() > args.connect_timeout {
            let _ = stop.send(true);
            return Err(format!(
                "only {ready} of {} subscribers had their first event after {:?} ({failed} failed)",
                args.subscribers, args.connect_timeout
            ));
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("sse_load: {ready} of {} subscribers connected…", args.subscribers);
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_time = start.elapsed();
    let failed = counters.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let _ = stop.send(true);
        let mut errors: HashMap<String, usize> = HashMap::new();
        for h in handles {
            if let Ok(SubResult { error: Some(e), .. }) = h.await {
                *errors.entry(e).or_default() += 1;
            }
        }
        return Err(format!("{failed} of {} subscribers failed to connect: {errors:?}", args.subscribers));
    }
    Ok(Subscribers { counters, stop, handles, connect_time })
}

impl Subscribers {
    async fn close(self) -> Vec<SubResult> {
        let _ = self.stop.send(true);
        let mut results = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            match h.await {
                Ok(r) => results.push(r),
                Err(e) => results.push(SubResult { record: 0, events: Vec::new(), error: Some(e.to_string()) }),
            }
        }
        results
    }
}

// --- writes ------------------------------------------------------------------------

fn unix_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// PUTs one running record per id over `parallel` connections; returns each
/// record's version.
async fn seed(target: &Target, prefix: &str, records: usize, parallel: usize) -> Result<Vec<u64>, String> {
    let parallel = parallel.clamp(1, records);
    let mut tasks = Vec::new();
    for k in 0..parallel {
        let target = target.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = HttpConn::connect(&target).await?;
            let mut out = Vec::new();
            for r in (k..records).step_by(parallel) {
                let path = format!("/progress/{}", record_id(&prefix, r));
                let body = format!(
                    r#"{{"status":"running","stage":"bench","current":0,"total":100,"metadata":{{"sent_ns":{}}}}}"#,
                    unix_ns()
                );
                let (resp, _) = conn.request("PUT", &path, &body).await?;
                if resp.status != 200 && resp.status != 201 {
                    return Err(format!("PUT {path}: status {}: {}", resp.status, String::from_utf8_lossy(&resp.body)));
                }
                let v = version_of(&resp.body).ok_or_else(|| format!("PUT {path}: no version in the answer"))?;
                out.push((r, v));
            }
            Ok::<_, String>(out)
        }));
    }
    let mut versions = vec![0u64; records];
    for t in tasks {
        for (r, v) in t.await.map_err(|e| e.to_string())?? {
            versions[r] = v;
        }
    }
    Ok(versions)
}

/// `n` GET /healthz over `parallel` keep-alive connections.
async fn healthz_traffic(target: &Target, n: usize, parallel: usize) -> Result<(), String> {
    let mut tasks = Vec::new();
    for k in 0..parallel {
        let target = target.clone();
        let count = n / parallel + usize::from(k < n % parallel);
        tasks.push(tokio::spawn(async move {
            let mut conn = HttpConn::connect(&target).await?;
            for _ in 0..count {
                let (resp, _) = conn.request("GET", "/healthz", "").await?;
                if resp.status != 200 {
                    return Err(format!("GET /healthz: status {}", resp.status));
                }
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

// --- /proc -----------------------------------------------------------------------

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[derive(Clone, Copy, Default)]
struct Mem {
    rss_kb: u64,
    hwm_kb: u64,
}

fn mem_of(pid: &str) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some(Mem { rss_kb: kb("VmRSS:")?, hwm_kb: kb("VmHWM:")? })
}

fn open_files(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ")".
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Linux's USER_HZ is 100 on every architecture progressd builds for.
const TICKS_PER_SECOND: f64 = 100.0;

struct CpuClock {
    pids: Vec<String>,
    start: Instant,
    ticks: Vec<u64>,
}

impl CpuClock {
    fn start(pids: Vec<String>) -> Self {
        let ticks = pids.iter().map(|p| cpu_ticks(p).unwrap_or(0)).collect();
        Self { pids, start: Instant::now(), ticks }
    }

    /// CPU used by these processes since `start`, as a percentage of one CPU.
    fn percent(&self) -> Vec<f64> {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        self.pids
            .iter()
            .zip(&self.ticks)
            .map(|(p, t0)| (cpu_ticks(p).unwrap_or(0).saturating_sub(*t0) as f64 / TICKS_PER_SECOND) / wall * 100.0)
            .collect()
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

// --- the two modes -------------------------------------------------------------------

async fn run(args: Args) -> Result<bool, String> {
    let sub_target = target(&args.url).await?;
    let write_target = target(&args.write_url).await?;
    eprintln!(
        "sse_load: {}: {} subscribers on {} records of {}, writes to {}",
        args.label, args.subscribers, args.records, args.url, args.write_url
    );
    let versions = seed(&write_target, &args.id_prefix, args.records, 8).await?;
    match args.mode {
        Mode::Delay => delay(&args, &sub_target, &write_target, &versions).await,
        Mode::Hold => hold(&args, &sub_target, &write_target).await,
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

async fn delay(args: &Args, sub_target: &Target, write_target: &Target, seeded: &[u64]) -> Result<bool, String> {
    let subs = open_subscribers(args, sub_target, true).await?;
    eprintln!(
        "sse_load: {} subscribers connected in {:.2} s; {} PUTs at {}/s",
        args.subscribers,
        subs.connect_time.as_secs_f64(),
        args.writes,
        args.rate
    );
    let counters = subs.counters.clone();
    let events_before = counters.events.load(Ordering::Relaxed);
    let mut per_record = vec![0u64; args.records];
    for j in 0..args.subscribers {
        per_record[j % args.records] += 1;
    }
    let expected: u64 = (0..args.writes).map(|i| per_record[i % args.records]).sum();

    let pids: Vec<String> = args.server_pids.iter().map(u32::to_string).collect();
    let server_cpu = CpuClock::start(pids);
    let loader_cpu = CpuClock::start(vec!["self".into()]);

    let mut conn = HttpConn::connect(write_target).await?;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut sent: HashMap<(usize, u64), usize> = HashMap::with_capacity(args.writes);
    let mut writes = Vec::with_capacity(args.writes);
    // (record, version, PUT answered after) of each write, for the diagnosis of missing events.
    let mut write_meta: Vec<(usize, u64, u64)> = Vec::with_capacity(args.writes);
    let mut put_us = Vec::with_capacity(args.writes);
    let mut write_errors = 0usize;
    let mut last_version = seeded.to_vec();
    // On the schedule, but never closer than `interval` to the previous
    // write: after a slow PUT the writer falls behind instead of bunching
    // writes up (a subscriber need not see versions written in a burst).
    let mut next = tokio::time::Instant::now() + Duration::from_millis(200);
    let mut late = 0usize;
    for i in 0..args.writes {
        if tokio::time::Instant::now() > next + Duration::from_millis(5) {
            late += 1;
        }
        tokio::time::sleep_until(next).await;
        let record = i % args.records;
        let path = format!("/progress/{}", record_id(&args.id_prefix, record));
        let body = format!(
            r#"{{"status":"running","stage":"bench","current":{i},"total":{},"metadata":{{"sent_ns":{},"seq":{i}}}}}"#,
            args.writes,
            unix_ns()
        );
        let (resp, at) = conn.request("PUT", &path, &body).await?;
        next = (next + interval).max(tokio::time::Instant::from_std(at) + interval);
        put_us.push(at.elapsed().as_micros() as u64);
        let version = version_of(&resp.body);
        match (resp.status, version) {
            (200 | 201, Some(v)) => {
                if v != last_version[record] + 1 {
                    eprintln!(
                        "sse_load: warning: {path} went from version {} to {v}: someone else writes it",
                        last_version[record]
                    );
                }
                last_version[record] = v;
                sent.insert((record, v), writes.len());
                writes.push(at);
                write_meta.push((record, v, at.elapsed().as_micros() as u64));
            }
            (status, _) => {
                write_errors += 1;
                eprintln!("sse_load: PUT {path}: status {status}: {}", String::from_utf8_lossy(&resp.body));
            }
        }
    }
    let writes_done = Instant::now();
    // Until every expected event is in, or the grace period is over.
    while counters.events.load(Ordering::Relaxed) - events_before < expected && writes_done.elapsed() < args.grace {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let server_pct = server_cpu.percent();
    let loader_pct = loader_cpu.percent()[0];
    let heartbeats = counters.heartbeats.load(Ordering::Relaxed);
    let ended = counters.ended.load(Ordering::Relaxed);
    let connect_s = subs.connect_time.as_secs_f64();
    let results = subs.close().await;

    // Match each subscriber's events to the writes.
    let mut delays: Vec<u64> = Vec::with_capacity(expected as usize);
    let mut first = vec![u64::MAX; writes.len()];
    let mut got = vec![0u64; writes.len()];
    let mut last = vec![0u64; writes.len()];
    let mut received = 0u64;
    let mut unmatched = 0u64;
    let mut duplicates = 0u64;
    let mut out_of_order = 0u64;
    let mut sub_errors: HashMap<String, usize> = HashMap::new();
    for r in &results {
        if let Some(e) = &r.error {
            *sub_errors.entry(e.clone()).or_default() += 1;
        }
        let mut prev: Option<u64> = None;
        for &(version, at) in &r.events {
            if let Some(p) = prev {
                if version == p {
                    duplicates += 1;
                    continue;
                }
                if version < p {
                    out_of_order += 1;
                }
            }
            prev = Some(version);
            match sent.get(&(r.record, version)) {
                Some(&w) => {
                    let d = at.saturating_duration_since(writes[w]).as_micros() as u64;
                    delays.push(d);
                    first[w] = first[w].min(d);
                    last[w] = last[w].max(d);
                    received += 1;
                    got[w] += 1;
                }
                None if version <= seeded[r.record] => {} // the first event: the record as seeded
                None => unmatched += 1,
            }
        }
    }
    let missing = expected.saturating_sub(received);
    // A write no subscriber of its record saw was skipped by the server as a
    // whole (its re-read already found a newer version); one only some missed
    // was skipped by those streams (they were not polled before the next).
    let mut missed_by_all = Vec::new();
    let mut missed_by_some = 0usize;
    for (w, &(record, version, put_us)) in write_meta.iter().enumerate() {
        if got[w] == 0 {
            missed_by_all.push((w, record, version, put_us));
        } else if got[w] < per_record[record] {
            missed_by_some += 1;
        }
    }
    for &(w, record, version, put_us) in missed_by_all.iter().take(10) {
        let next = (w + 1..write_meta.len()).find(|&n| write_meta[n].0 == record);
        let next_text = next.map_or("no later write".to_string(), |n| {
            format!(
                "the next write (version {}) was sent {:.1} ms later and reached its first subscriber after {:.1} ms",
                write_meta[n].1,
                writes[n].saturating_duration_since(writes[w]).as_secs_f64() * 1000.0,
                if first[n] == u64::MAX { f64::NAN } else { ms(first[n]) }
            )
        });
        eprintln!(
            "sse_load: write {w} (record {record}, version {version}, PUT answered in {:.1} ms) reached none of its {} subscribers; {next_text}",
            ms(put_us),
            per_record[record]
        );
    }
    delays.sort_unstable();
    put_us.sort_unstable();
    let seen: Vec<usize> = (0..writes.len()).filter(|&w| first[w] != u64::MAX).collect();
    let mut firsts: Vec<u64> = seen.iter().map(|&w| first[w]).collect();
    let mut lasts: Vec<u64> = seen.iter().map(|&w| last[w]).collect();
    firsts.sort_unstable();
    lasts.sort_unstable();

    let (p50, p90, p99) = (percentile(&delays, 50.0), percentile(&delays, 90.0), percentile(&delays, 99.0));
    let max = delays.last().copied().unwrap_or(0);
    let server_pct_text = server_pct.iter().map(|p| format!("{p:.0}")).collect::<Vec<_>>().join("+");
    println!(
        "{:<28} {:>6} {:>7} {:>6} {:>5} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>7} {:>8} {:>8}",
        "scenario",
        "subs",
        "records",
        "writes",
        "rate",
        "expected",
        "received",
        "missing",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "1st p50",
        "last p50",
        "PUT p50",
        "srv cpu%",
        "ldr cpu%"
    );
    println!(
        "{:<28} {:>6} {:>7} {:>6} {:>5} {:>9} {:>9} {:>7} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>9.2} {:>9.2} {:>7.2} {:>8} {:>8.0}",
        args.label,
        args.subscribers,
        args.records,
        writes.len(),
        args.rate,
        expected,
        received,
        missing,
        ms(p50),
        ms(p90),
        ms(p99),
        ms(max),
        ms(percentile(&firsts, 50.0)),
        ms(percentile(&lasts, 50.0)),
        ms(percentile(&put_us, 50.0)),
        server_pct_text,
        loader_pct
    );
    println!(
        "SSE_RESULT mode=delay label={} subs={} records={} writes={} rate={} connect_s={:.2} expected={expected} \
         received={received} missing={missing} unmatched={unmatched} duplicates={duplicates} out_of_order={out_of_order} \
         p50_us={p50} p90_us={p90} p99_us={p99} max_us={max} first_p50_us={} first_p99_us={} last_p50_us={} \
         last_p99_us={} put_p50_us={} put_p99_us={} server_cpu_pct={} loader_cpu_pct={loader_pct:.0} \
         writes_missed_by_all={} writes_missed_by_some={missed_by_some} late_writes={late} heartbeats={heartbeats} ended={ended} \
         write_errors={write_errors} sub_errors={}",
        args.label.replace(' ', "_"),
        args.subscribers,
        args.records,
        writes.len(),
        args.rate,
        connect_s,
        percentile(&firsts, 50.0),
        percentile(&firsts, 99.0),
        percentile(&lasts, 50.0),
        percentile(&lasts, 99.0),
        percentile(&put_us, 50.0),
        percentile(&put_us, 99.0),
        server_pct_text,
        missed_by_all.len(),
        sub_errors.values().sum::<usize>(),
    );
    if !sub_errors.is_empty() {
        eprintln!("sse_load: subscriber errors: {sub_errors:?}");
    }
    Ok(write_errors == 0 && sub_errors.is_empty() && ended == 0)
}

async fn hold(args: &Args, sub_target: &Target, write_target: &Target) -> Result<bool, String> {
    let pid = args.server_pids[0];
    let pid_s = pid.to_string();
    let sample = |phase: &str| -> Result<(Mem, usize, Mem), String> {
        let m = mem_of(&pid_s).ok_or_else(|| format!("cannot read /proc/{pid}/status: is the server running?"))?;
        let fds = open_files(pid).ok_or_else(|| format!("cannot list /proc/{pid}/fd"))?;
        let own = mem_of("self").unwrap_or_default();
        eprintln!(
            "sse_load: {phase:<18} server VmRSS {:>8.1} MB  VmHWM {:>8.1} MB  open files {:>6}   (loader VmRSS {:.1} MB)",
            mb(m.rss_kb),
            mb(m.hwm_kb),
            fds,
            mb(own.rss_kb)
        );
        Ok((m, fds, own))
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle, idle_fds, _) = sample("idle")?;

    let subs = open_subscribers(args, sub_target, false).await?;
    eprintln!("sse_load: {} subscribers connected in {:.2} s", args.subscribers, subs.connect_time.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (connected, connected_fds, loader) = sample("connected")?;

    // One update per record, and every subscriber gets it.
    let counters = subs.counters.clone();
    let before = counters.events.load(Ordering::Relaxed);
    let started = Instant::now();
    seed(write_target, &args.id_prefix, args.records, 8).await?;
    let want = before + args.subscribers as u64;
    while counters.events.load(Ordering::Relaxed) < want {
        if started.elapsed() > args.connect_timeout {
            return Err(format!(
                "after one update per record, only {} of {} subscribers got the event",
                counters.events.load(Ordering::Relaxed) - before,
                args.subscribers
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let update_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (updated, _, _) = sample("one update each")?;
    let ended = counters.ended.load(Ordering::Relaxed);
    let connect_s = subs.connect_time.as_secs_f64();

    let results = subs.close().await;
    let errors = results.iter().filter(|r| r.error.is_some()).count();
    // The server closes its side when it notices: wait for its sockets to go.
    let closing = Instant::now();
    loop {
        let fds = open_files(pid).unwrap_or(0);
        if fds <= idle_fds + 2 || closing.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let released = closing.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, after_fds, _) = sample("disconnected")?;
    // Memory freed by other threads goes back to its owner's heap (and to
    // the OS) when that thread allocates again: show what a little traffic does.
    healthz_traffic(sub_target, 1000, 8).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (traffic, _, _) = sample("after 1000 GETs")?;

    let per_conn_kb = connected.rss_kb.saturating_sub(idle.rss_kb) as f64 / args.subscribers as f64;
    println!(
        "{:<28} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "scenario",
        "subs",
        "records",
        "idle MB",
        "conn MB",
        "upd MB",
        "after MB",
        "GETs MB",
        "HWM MB",
        "KB/sub",
        "connect s",
        "fan-out s",
        "loader MB"
    );
    println!(
        "{:<28} {:>6} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.2} {:>9.2} {:>9.1}",
        args.label,
        args.subscribers,
        args.records,
        mb(idle.rss_kb),
        mb(connected.rss_kb),
        mb(updated.rss_kb),
        mb(after.rss_kb),
        mb(traffic.rss_kb),
        mb(traffic.hwm_kb),
        per_conn_kb,
        connect_s,
        update_time.as_secs_f64(),
        mb(loader.rss_kb)
    );
    println!(
        "SSE_RESULT mode=hold label={} subs={} records={} idle_rss_kb={} connected_rss_kb={} updated_rss_kb={} \
         after_rss_kb={} traffic_rss_kb={} hwm_kb={} per_sub_kb={per_conn_kb:.1} connect_s={:.2} update_s={:.2} idle_fds={idle_fds} \
         connected_fds={connected_fds} after_fds={after_fds} release_s={:.2} loader_rss_kb={} ended={ended} \
         sub_errors={errors}",
        args.label.replace(' ', "_"),
        args.subscribers,
        args.records,
        idle.rss_kb,
        connected.rss_kb,
        updated.rss_kb,
        after.rss_kb,
        traffic.rss_kb,
        traffic.hwm_kb,
        connect_s,
        update_time.as_secs_f64(),
        released.as_secs_f64(),
        loader.rss_kb,
    );
    Ok(errors == 0 && ended == 0)
}
