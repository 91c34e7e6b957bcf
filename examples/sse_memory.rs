//! progressd's memory with more open event streams than a process may open
//! files: `bench/sse_curve.sh` holds one socket a stream in the server and
//! one in its loader, so the open-file hard limit (`ulimit -Hn`, 20,000 on
//! the machines of issue 23) caps it below 100,000.
//!
//! Here progressd runs in this process, as the binary runs it
//! (`progressd::run` with the memory store, the binary's allocator, `warn`),
//! but its connections are byte streams made in the process instead of
//! sockets ([`progressd::serve::Listener`]). Each subscriber is one such
//! stream: it hands the server its `GET /progress/{id}/events` request,
//! then counts what the server writes to it (the response head, `event:`
//! lines) and drops the bytes, as a client that reads everything would. A
//! subscriber holds a few dozen bytes and no buffer, so the process's RSS is
//! the server's: what a socket's own buffers take is the kernel's, and was
//! never in the server's RSS either. What is missing against a socket is
//! Tokio's registration of it with the reactor (a slab entry of a few
//! hundred bytes).
//!
//! ```text
//! sse_memory --subscribers 100000 [--records 1000]
//! ```
//!
//! Seeds the records over one in-process connection, samples VmRSS,
//! opens the subscribers and waits for every first event, samples, updates
//! every record once and waits for every subscriber to get the event,
//! samples. Prints a table and one `SSE_RESULT key=value …` line (as
//! `examples/sse_load.rs --mode hold`). Exit status 1 when a subscriber is
//! refused or a write fails, 2 on bad arguments.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;

// As the binary (src/main.rs): RSS depends on the allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: sse_memory --subscribers N [--records R (default 1000)]";

/// How long the subscribers may take to open, and each update to reach them.
const PATIENCE: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    let (subscribers, records) = match args() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("sse_memory: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a Tokio runtime");
    match runtime.block_on(hold(subscribers, records)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sse_memory: {e}");
            ExitCode::from(2)
        }
    }
}

fn args() -> Result<(usize, usize), String> {
    let mut subscribers = None;
    let mut records = 1000;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = value.parse::<usize>().map_err(|_| format!("{flag} must be a whole number, not {value:?}"))?;
        match flag.as_str() {
            "--subscribers" => subscribers = Some(number),
            "--records" => records = number,
            _ => return Err(format!("unknown option {flag:?}")),
        }
    }
    let subscribers = subscribers.ok_or("--subscribers is required")?;
    if subscribers == 0 || records == 0 {
        return Err("--subscribers and --records must be at least 1".into());
    }
    Ok((subscribers, records))
}

/// What the subscribers have seen, all together.
#[derive(Default)]
struct Tally {
    /// Streams answered `200`.
    opened: AtomicU64,
    /// Streams answered anything else.
    refused: AtomicU64,
    /// `event: progress` lines received.
    events: AtomicU64,
}

/// One connection the server accepts: an in-process stream.
enum Conn {
    /// A subscriber.
    Held(Held),
    /// The connection the records are written over.
    Duplex(DuplexStream),
}

/// The listener: connections handed to it over a channel.
struct Streams(mpsc::UnboundedReceiver<Conn>);

impl progressd::serve::Listener for Streams {
    type Io = Conn;
    const OPENS_FILES: bool = false;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        match self.0.recv().await {
            Some(conn) => (conn, SocketAddr::from((Ipv4Addr::LOCALHOST, 1))),
            None => std::future::pending().await,
        }
    }

    fn refuse(conn: Conn) {
        if let Conn::Held(held) = conn {
            held.tally.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }
}

/// A subscriber: its request, then a sink that counts what it is sent.
struct Held {
    /// The request not yet read by the server (empty once read).
    request: Box<[u8]>,
    /// Whether the response's head has been written.
    answered: bool,
    tally: Arc<Tally>,
}

impl Held {
    fn new(id: &str, tally: Arc<Tally>) -> Self {
        let request =
            format!("GET /progress/{id}/events HTTP/1.1\r\nhost: memory\r\naccept: text/event-stream\r\n\r\n");
        Self { request: request.into_bytes().into_boxed_slice(), answered: false, tally }
    }

    fn received(&mut self, bytes: &[u8]) {
        if !self.answered {
            self.answered = true;
            let counter = if bytes.starts_with(b"HTTP/1.1 200") { &self.tally.opened } else { &self.tally.refused };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let events = bytes.windows(EVENT.len()).filter(|w| *w == EVENT).count();
        self.tally.events.fetch_add(events as u64, Ordering::Relaxed);
    }
}

const EVENT: &[u8] = b"event: progress\n";

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Duplex(duplex) => Pin::new(duplex).poll_read(cx, buf),
            Conn::Held(held) if held.request.is_empty() => Poll::Pending,
            Conn::Held(held) => {
                // The whole request fits hyper's first read.
                let n = held.request.len().min(buf.remaining());
                buf.put_slice(&held.request[..n]);
                held.request = held.request[n..].into();
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Duplex(duplex) => Pin::new(duplex).poll_write(cx, bytes),
            Conn::Held(held) => {
                held.received(bytes);
                Poll::Ready(Ok(bytes.len()))
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Duplex(duplex) => Pin::new(duplex).poll_write_vectored(cx, slices),
            Conn::Held(held) => {
                // An event is one slice (its chunk's size line another).
                slices.iter().for_each(|slice| held.received(slice));
                Poll::Ready(Ok(slices.iter().map(|slice| slice.len()).sum()))
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        // As a TcpStream, so hyper writes the way it writes to a socket.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Duplex(duplex) => Pin::new(duplex).poll_flush(cx),
            Conn::Held(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Duplex(duplex) => Pin::new(duplex).poll_shutdown(cx),
            Conn::Held(_) => Poll::Ready(Ok(())),
        }
    }
}

fn record_id(r: usize) -> String {
    format!("memory-{r}")
}

/// PUTs every record once over one in-process connection.
async fn write_all(connect: &mpsc::UnboundedSender<Conn>, records: usize, current: u32) -> Result<(), String> {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    connect.send(Conn::Duplex(theirs)).map_err(|_| "the server is gone")?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(ours)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("sse_memory: the writing connection failed: {e}");
        }
    });
    for r in 0..records {
        let path = format!("/progress/{}", record_id(r));
        let body = format!(r#"{{"status":"running","stage":"bench","current":{current},"total":100}}"#);
        let request = http::Request::put(&path)
            .header("host", "memory")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| format!("PUT {path}: {e:?}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("PUT {path}: {e:?}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("PUT {path}: {e}"))?.to_bytes();
        if !status.is_success() {
            return Err(format!("PUT {path}: {status}: {}", String::from_utf8_lossy(&body)));
        }
    }
    Ok(())
}

/// Waits until `count` reaches `want`, or fails after [`PATIENCE`].
async fn reach(count: impl Fn() -> u64, want: u64, what: &str) -> Result<(), String> {
    let started = Instant::now();
    while count() < want {
        if started.elapsed() > PATIENCE {
            return Err(format!("{what}: {} of {want} after {PATIENCE:?}", count()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// VmRSS of this process, in KB.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

async fn hold(subscribers: usize, records: usize) -> Result<bool, String> {
    let env = [
        ("PROGRESS_LOG_LEVEL", "warn"),
        ("PROGRESS_TTL_SECONDS", "900"),
        ("PROGRESS_MAX_CONNECTIONS", &(subscribers + 100).to_string()),
    ];
    let settings =
        progressd::Settings::from_env_without_file(env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
            .map_err(|e| e.to_string())?;
    let (connect, accepted) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        if let Err(e) = progressd::run(settings, Streams(accepted), std::future::pending()).await {
            eprintln!("sse_memory: the server stopped: {e}");
        }
    });
    write_all(&connect, records, 0).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kb();
    eprintln!("sse_memory: idle               VmRSS {:>8.1} MB", mb(idle));

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    for s in 0..subscribers {
        connect
            .send(Conn::Held(Held::new(&record_id(s % records), tally.clone())))
            .map_err(|_| "the server is gone")?;
        if s % 1000 == 999 {
            tokio::task::yield_now().await;
        }
    }
    let want = subscribers as u64;
    let answered = || tally.opened.load(Ordering::Relaxed) + tally.refused.load(Ordering::Relaxed);
    reach(answered, want, "answered").await?;
    let events = || tally.events.load(Ordering::Relaxed);
    if tally.refused.load(Ordering::Relaxed) == 0 {
        reach(events, want, "first events").await?;
    }
    let connect_s = started.elapsed().as_secs_f64();
    let refused = tally.refused.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = rss_kb();
    eprintln!(
        "sse_memory: connected          VmRSS {:>8.1} MB ({subscribers} streams in {connect_s:.2} s)",
        mb(connected)
    );

    let started = Instant::now();
    write_all(&connect, records, 1).await?;
    reach(events, 2 * tally.opened.load(Ordering::Relaxed), "one update each").await?;
    let update_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let updated = rss_kb();
    eprintln!("sse_memory: one update each    VmRSS {:>8.1} MB", mb(updated));

    let per_sub_kb = connected.saturating_sub(idle) as f64 / subscribers as f64;
    println!(
        "{:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}",
        "subs", "records", "idle MB", "conn MB", "upd MB", "KB/sub", "connect s", "fan-out s"
    );
    println!(
        "{subscribers:>7} {records:>7} {:>9.1} {:>9.1} {:>9.1} {per_sub_kb:>9.1} {connect_s:>10.2} {update_s:>9.2}",
        mb(idle),
        mb(connected),
        mb(updated)
    );
    println!(
        "SSE_RESULT mode=memory subs={subscribers} records={records} idle_rss_kb={idle} connected_rss_kb={connected} \
         updated_rss_kb={updated} per_sub_kb={per_sub_kb:.1} connect_s={connect_s:.2} update_s={update_s:.2} \
         opened={} refused={refused} events={}",
        tally.opened.load(Ordering::Relaxed),
        tally.events.load(Ordering::Relaxed),
    );
    Ok(refused == 0 && tally.opened.load(Ordering::Relaxed) == want)
}
