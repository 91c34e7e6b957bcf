//! The least a write can cost (issue 23): the bare axum route of
//! `bare_axum`, plus the Redis work progressd's contract asks of every
//! write and nothing else. `bench/bare.sh` measures PUT and PATCH against
//! it, beside the bare route, so the write rows have a limit of their own.
//!
//! `PUT` or `PATCH /progress/{id}` takes the body as it comes (no parsing,
//! no validation, no new version built), runs one script in Redis that
//! does what progressd's in-place write does (`GETRANGE` of the stored
//! header, `SET` of the value with its TTL, `SET` of the expiry marker,
//! `PUBLISH` of a change notice) over one multiplexed connection, as
//! progressd does by default, and answers `200 application/json` with the
//! body it was sent (progressd answers the stored record, about as long).
//! With `BODY_FILE` set, a `PATCH` stores and answers that file's bytes
//! instead (`bench/bare.sh` gives it the record as progressd answers it):
//! a patch is short, but progressd stores and answers the whole record.
//! A second connection is subscribed to the change channel and reads
//! every notice, as each progressd instance does.
//!
//! With `WRITE=set` the same commands go as a plain pipeline (`SET`,
//! `SET`, `PUBLISH`) with no script: not a compare-and-set, so not a write
//! progressd could make; it shows what the script costs. With
//! `WRITE=batch` the writes that arrive while a script call is out go
//! together in the next call (at most [`BATCH`]), one script looping over
//! them: what group commit would save Redis.
//!
//! ```text
//! cargo build --release --locked --manifest-path bench/bare_axum/Cargo.toml --target-dir target
//! PORT=18081 REDIS_URL=redis://127.0.0.1:6379 BARE_KEY_PREFIX=bench-bare-x: target/release/bare_write
//! ```

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::Response;
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// progressd's `swap_in_place.lua` with the channel an argument and the
/// comparison's outcome not acted on (this server keeps no versions, so
/// every write goes through): the same commands, with the same sizes.
const SCRIPT: &str = r"
local head = redis.call('GETRANGE', KEYS[1], '0', ARGV[2])
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[7])
redis.call('PUBLISH', ARGV[8], ARGV[5])
if head == ARGV[1] then return 1 end
return 1
";

/// [`SCRIPT`] for several records: KEYS are each record's key and marker,
/// ARGV each record's seven arguments, then the channel.
const BATCH_SCRIPT: &str = r"
local channel = ARGV[#ARGV]
for i = 0, #KEYS / 2 - 1 do
  local k, a = 2 * i, 7 * i
  local head = redis.call('GETRANGE', KEYS[k + 1], '0', ARGV[a + 2])
  redis.call('SET', KEYS[k + 1], ARGV[a + 3], 'PX', ARGV[a + 4])
  redis.call('SET', KEYS[k + 2], ARGV[a + 6], 'PX', ARGV[a + 7])
  redis.call('PUBLISH', channel, ARGV[a + 5])
end
return #KEYS / 2
";

/// Most writes in one batched script call.
const BATCH: usize = 16;

/// A header line the size of a stored record's (version, times, status).
const HEADER: &str = r#"{"v":12,"c":1765022400000,"u":1765022460000,"x":1765108860000,"t":"running"}"#;
const TTL_MS: &str = "86400000";
const MARKER_TTL_MS: &str = "90000000";
const MARKER: &str = "x1765108860000";

/// How a write reaches Redis (`WRITE`).
enum Mode {
    /// One [`SCRIPT`] call a write.
    Script(redis::Script),
    /// `SET`, `SET`, `PUBLISH` in a pipeline.
    Set,
    /// Queued for the [`batcher`].
    Batch(tokio::sync::mpsc::UnboundedSender<Queued>),
}

/// A write waiting for the batcher: its id, value and who to answer.
type Queued = (String, Bytes, tokio::sync::oneshot::Sender<redis::RedisResult<()>>);

struct Writer {
    conn: MultiplexedConnection,
    prefix: String,
    channel: String,
    mode: Mode,
    /// What a PATCH stores and answers, when set.
    record: Option<Bytes>,
}

async fn put(State(w): State<Arc<Writer>>, Path(id): Path<String>, body: Bytes) -> Response {
    write(&w, &id, body).await
}

async fn patch(State(w): State<Arc<Writer>>, Path(id): Path<String>, body: Bytes) -> Response {
    let stored = w.record.clone().unwrap_or(body);
    write(&w, &id, stored).await
}

/// Record `id`'s key, expiry marker key and change notice, as progressd names them.
fn names(prefix: &str, id: &str) -> (String, String, String) {
    (format!("{prefix}progress:{id}"), format!("{prefix}gone:{id}"), format!("13:{id}"))
}

/// One record's two keys and seven arguments, as [`SCRIPT`] and
/// [`BATCH_SCRIPT`] take them (the channel goes after the last record).
fn add_write(call: &mut redis::ScriptInvocation<'_>, prefix: &str, id: &str, body: &[u8]) {
    let (key, marker, notice) = names(prefix, id);
    call.key(key).key(marker);
    call.arg(HEADER).arg(HEADER.len() - 1).arg(body).arg(TTL_MS).arg(notice).arg(MARKER).arg(MARKER_TTL_MS);
}

async fn write(w: &Writer, id: &str, body: Bytes) -> Response {
    let mut conn = w.conn.clone();
    let done: redis::RedisResult<()> = match &w.mode {
        Mode::Script(script) => {
            let mut call = script.prepare_invoke();
            add_write(&mut call, &w.prefix, id, &body);
            call.arg(&w.channel);
            call.invoke_async::<i64>(&mut conn).await.map(drop)
        }
        Mode::Set => {
            let (key, marker, notice) = names(&w.prefix, id);
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg(key).arg(&body[..]).arg("PX").arg(TTL_MS).ignore();
            pipe.cmd("SET").arg(marker).arg(MARKER).arg("PX").arg(MARKER_TTL_MS).ignore();
            pipe.cmd("PUBLISH").arg(&w.channel).arg(notice).ignore();
            pipe.query_async(&mut conn).await
        }
        Mode::Batch(batches) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            match batches.send((id.to_owned(), body.clone(), tx)) {
                Ok(()) => rx.await.unwrap_or_else(|_| Err(std::io::Error::other("the batcher stopped").into())),
                Err(_) => Err(std::io::Error::other("the batcher stopped").into()),
            }
        }
    };
    let mut response = match done {
        Ok(()) => Response::new(axum::body::Body::from(body)),
        Err(e) => {
            let mut r = Response::new(axum::body::Body::from(e.to_string()));
            *r.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    };
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

/// Takes the queued writes, at most [`BATCH`] at a time, and runs each
/// batch as one script call; the next batch is what queued meanwhile.
async fn batcher(
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Queued>,
    mut conn: MultiplexedConnection,
    prefix: String,
    channel: String,
) {
    let script = redis::Script::new(BATCH_SCRIPT);
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let mut call = script.prepare_invoke();
        for (id, body, _) in &batch {
            add_write(&mut call, &prefix, id, body);
        }
        call.arg(&channel);
        let done = call.invoke_async::<i64>(&mut conn).await.map(drop);
        for (_, _, tx) in batch.drain(..) {
            let _ = tx.send(done.clone());
        }
    }
}

/// Reads every change notice on `channel`, as a progressd instance's
/// subscription does, and drops it.
async fn listen(address: String, channel: String) -> std::io::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let command = format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{channel}\r\n", channel.len());
    stream.write_all(command.as_bytes()).await?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if stream.read(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8082);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = std::env::var("BARE_KEY_PREFIX").unwrap_or_else(|_| "bench-bare-write:".into());
    let write = std::env::var("WRITE").unwrap_or_else(|_| "script".into());
    let client = redis::Client::open(url.as_str())?;
    let info = client.get_connection_info();
    let address = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => return Err(format!("a plain TCP Redis address, not {other:?}").into()),
    };
    let channel = format!("{prefix}progress:changes");
    tokio::spawn({
        let channel = channel.clone();
        async move {
            if let Err(e) = listen(address, channel).await {
                eprintln!("bare_write: the change subscription failed: {e}");
            }
        }
    });
    let conn = client.get_multiplexed_async_connection().await?;
    let record = std::env::var_os("BODY_FILE").map(std::fs::read).transpose()?.map(Bytes::from);
    let mode = match write.as_str() {
        "set" => Mode::Set,
        "batch" => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(batcher(rx, conn.clone(), prefix.clone(), channel.clone()));
            Mode::Batch(tx)
        }
        "script" => Mode::Script(redis::Script::new(SCRIPT)),
        other => return Err(format!("WRITE is script, set or batch, not {other:?}").into()),
    };
    let writer = Arc::new(Writer { conn, prefix, channel, mode, record });
    let app = Router::new().route("/progress/{id}", axum::routing::put(put).patch(patch)).with_state(writer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
