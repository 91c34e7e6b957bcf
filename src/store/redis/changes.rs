//! Change notices from Redis, for everything in this instance that must
//! hear about writes made through any instance.
//!
//! Every write and delete in Redis publishes `{version}:{id}` (version 0:
//! deleted) on `{prefix}progress:changes` from inside its Lua script, so the
//! notice leaves Redis in the same atomic step as the change. One task per
//! instance holds the subscription ([`ChangeNotices::listen`]) and hands each
//! notice to the attached [`ChangeSink`]s: the read cache drops its entry,
//! the live-update hub (`crate::live`) re-reads records that someone watches.
//! It pings to catch a connection that died silently and resubscribes with
//! backoff; sinks hear when notices stop and when they flow again (when they
//! may have missed some).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Something that acts on change notices.
pub trait ChangeSink: Send + Sync + 'static {
    /// Record `id` changed to `version` (0: deleted).
    fn changed(&self, id: &str, version: u64);

    /// Notices stopped (`false`) or flow again (`true`); anything may have
    /// changed in between. Also called with `true` for a notice that cannot
    /// be read.
    fn listening(&self, live: bool);
}

/// The subscription's state and the sinks it feeds.
pub struct ChangeNotices {
    sinks: Mutex<Vec<Weak<dyn ChangeSink>>>,
    live: AtomicBool,
}

impl ChangeNotices {
    /// Subscribes to `channel` in the background. The task ends once the
    /// returned value is dropped.
    /// A `rediss://` client's subscription uses `tls`, which should check
    /// the server as the pool does.
    pub fn listen(
        client: redis::Client,
        tls: Option<Arc<rustls::ClientConfig>>,
        channel: String,
        ping_every: Duration,
    ) -> Arc<Self> {
        let notices = Arc::new(Self { sinks: Mutex::new(Vec::new()), live: AtomicBool::new(false) });
        let tls = tls.map(tokio_rustls::TlsConnector::from);
        tokio::spawn(listen(client, tls, channel, Arc::downgrade(&notices), ping_every));
        notices
    }

    /// Feeds notices to `sink` from now on; it first hears whether they flow.
    pub fn attach(&self, sink: Weak<dyn ChangeSink>) {
        if let Some(s) = sink.upgrade() {
            s.listening(self.is_live());
        }
        self.lock().push(sink);
    }

    /// Whether the subscription is up and answering pings.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn ChangeSink>>> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn each(&self, f: impl Fn(&dyn ChangeSink)) {
        let sinks: Vec<_> = {
            let mut sinks = self.lock();
            sinks.retain(|s| s.strong_count() > 0);
            sinks.iter().filter_map(Weak::upgrade).collect()
        };
        for sink in sinks {
            f(sink.as_ref());
        }
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
        self.each(|s| s.listening(live));
    }

    /// A notice as published: `{version}:{id}`.
    fn deliver(&self, payload: &[u8]) {
        let parsed = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.split_once(':'))
            .and_then(|(v, id)| Some((v.parse::<u64>().ok()?, id)));
        match parsed {
            Some((version, id)) => self.each(|s| s.changed(id, version)),
            // Not a notice of ours: the safe answer is to assume anything changed.
            None => self.each(|s| s.listening(true)),
        }
    }
}

async fn listen(
    client: redis::Client,
    tls: Option<tokio_rustls::TlsConnector>,
    channel: String,
    notices: Weak<ChangeNotices>,
    ping_every: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if notices.strong_count() == 0 {
            return;
        }
        let connected =
            tokio::time::timeout(ping_every, Subscription::open(client.get_connection_info(), tls.as_ref(), &channel))
                .await;
        let Ok(Ok(mut subscription)) = connected else {
            tracing::debug!("cannot subscribe to change notices yet; read cache off, live updates local only");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        backoff = Duration::from_millis(100);
        match notices.upgrade() {
            Some(n) => n.set_live(true),
            None => return,
        }
        tracing::debug!(%channel, "change notices flowing");
        let mut ping = tokio::time::interval(ping_every);
        ping.tick().await;
        // A PING unanswered by the next tick: the connection died silently.
        let mut ping_unanswered = false;
        loop {
            tokio::select! {
                read = subscription.read() => {
                    if !matches!(read, Ok(n) if n > 0) {
                        break;
                    }
                    let Some(n) = notices.upgrade() else { return };
                    let heard = subscription.each_reply(|reply| match reply {
                        Reply::Message(payload) => n.deliver(payload),
                        Reply::Pong => ping_unanswered = false,
                    });
                    if let Err(e) = heard {
                        tracing::warn!(error = %e, "unexpected reply on the change notice subscription");
                        break;
                    }
                }
                _ = ping.tick() => {
                    if notices.strong_count() == 0 {
                        return;
                    }
                    if ping_unanswered {
                        break;
                    }
                    ping_unanswered = true;
                    if !matches!(tokio::time::timeout(ping_every, subscription.send(&[b"PING"])).await, Ok(Ok(()))) {
                        break;
                    }
                }
            }
        }
        if let Some(n) = notices.upgrade() {
            n.set_live(false);
            tracing::warn!("change notices stopped; read cache off and live updates local until they resume");
        }
    }
}

/// A connection of its own that subscribes to one channel, read without
/// redis-rs's pub/sub machinery (a task and a channel between the socket
/// and the stream of messages, and a parsed value and a message object for
/// every notice, which made hearing a write's own notice cost about 5,000
/// instructions): the bytes are read into one buffer and parsed in place,
/// with no allocation per notice. RESP2; TCP, TLS or a Unix socket.
struct Subscription {
    stream: Stream,
    buf: bytes::BytesMut,
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

/// What the subscription hears once subscribed.
enum Reply<'a> {
    /// A message on the channel: its payload.
    Message(&'a [u8]),
    /// The answer to a PING.
    Pong,
}

impl Subscription {
    /// Connects, authenticates when the URL says so, and subscribes.
    async fn open(
        info: &redis::ConnectionInfo,
        tls: Option<&tokio_rustls::TlsConnector>,
        channel: &str,
    ) -> std::io::Result<Self> {
        let stream = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                Stream::Tcp(tcp)
            }
            redis::ConnectionAddr::TcpTls { host, port, .. } => {
                let tls =
                    tls.ok_or_else(|| std::io::Error::other("a rediss:// subscription without a TLS configuration"))?;
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_start_matches('[').trim_end_matches(']').to_owned(),
                )
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                Stream::Tls(Box::new(tls.connect(name, tcp).await?))
            }
            #[cfg(unix)]
            redis::ConnectionAddr::Unix(path) => Stream::Unix(tokio::net::UnixStream::connect(path).await?),
            other => return Err(std::io::Error::other(format!("change notices cannot be read over {other}"))),
        };
        let mut subscription = Self { stream, buf: bytes::BytesMut::with_capacity(16 * 1024) };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => subscription.send(&[b"AUTH", user.as_bytes(), password.as_bytes()]).await?,
                None => subscription.send(&[b"AUTH", password.as_bytes()]).await?,
            }
            subscription
                .answer(|frame| match frame {
                    Frame::Status(_) => Ok(()),
                    Frame::Error(e) => Err(std::io::Error::other(format!("AUTH: {}", String::from_utf8_lossy(e)))),
                    _ => Err(protocol_error("an unexpected answer to AUTH")),
                })
                .await?;
        }
        subscription.send(&[b"SUBSCRIBE", channel.as_bytes()]).await?;
        subscription
            .answer(|frame| match frame {
                Frame::Parts([kind, ..], 3) if kind.eq_ignore_ascii_case(b"subscribe") => Ok(()),
                Frame::Error(e) => Err(std::io::Error::other(format!("SUBSCRIBE: {}", String::from_utf8_lossy(e)))),
                _ => Err(protocol_error("an unexpected answer to SUBSCRIBE")),
            })
            .await?;
        Ok(subscription)
    }

    /// Sends one command (encoded by redis-rs).
    async fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = redis::Cmd::new();
        for arg in args {
            cmd.arg(*arg);
        }
        let out = cmd.get_packed_command();
        match &mut self.stream {
            Stream::Tcp(s) => s.write_all(&out).await,
            Stream::Tls(s) => {
                s.write_all(&out).await?;
                s.flush().await
            }
            #[cfg(unix)]
            Stream::Unix(s) => s.write_all(&out).await,
        }
    }

    /// Reads what has arrived into the buffer: how many bytes (0: closed).
    async fn read(&mut self) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        match &mut self.stream {
            Stream::Tcp(s) => s.read_buf(&mut self.buf).await,
            Stream::Tls(s) => s.read_buf(&mut self.buf).await,
            #[cfg(unix)]
            Stream::Unix(s) => s.read_buf(&mut self.buf).await,
        }
    }

    /// Reads until one whole reply is in, and hands it to `check` (for
    /// the handshake).
    async fn answer(&mut self, check: impl Fn(Frame<'_>) -> std::io::Result<()>) -> std::io::Result<()> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf)? {
                let answer = check(frame);
                bytes::Buf::advance(&mut self.buf, used);
                return answer;
            }
            if self.read().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Hands every whole reply in the buffer to `f` and drops it from the
    /// buffer; a partial one stays for the next read. Anything but a
    /// message on the channel or a PONG is an error.
    fn each_reply(&mut self, mut f: impl FnMut(Reply<'_>)) -> std::io::Result<()> {
        let mut at = 0;
        while let Some((frame, used)) = parse_frame(&self.buf[at..])? {
            match frame {
                Frame::Parts([kind, _channel, payload], 3) if kind.eq_ignore_ascii_case(b"message") => {
                    f(Reply::Message(payload))
                }
                Frame::Parts([kind, ..], 2) if kind.eq_ignore_ascii_case(b"pong") => f(Reply::Pong),
                Frame::Error(e) => return Err(std::io::Error::other(String::from_utf8_lossy(e).into_owned())),
                _ => return Err(protocol_error("an unexpected reply")),
            }
            at += used;
        }
        bytes::Buf::advance(&mut self.buf, at);
        Ok(())
    }
}

/// One RESP2 reply, as much of the protocol as a subscription hears.
#[derive(Debug, PartialEq)]
enum Frame<'a> {
    Status(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    /// An array of bulk strings (an integer in it as its digits), of at
    /// most three: its parts, and how many there are.
    Parts([&'a [u8]; 3], usize),
}

/// The first whole reply in `buf` and its length; `None` while part of it
/// has yet to arrive.
fn parse_frame(buf: &[u8]) -> std::io::Result<Option<(Frame<'_>, usize)>> {
    let Some((head, mut at)) = line(buf, 0)? else { return Ok(None) };
    let frame = match head[0] {
        b'+' => Frame::Status(&head[1..]),
        b'-' => Frame::Error(&head[1..]),
        b':' => Frame::Int(number(&head[1..])?),
        b'*' => {
            let n = usize::try_from(number(&head[1..])?).ok().filter(|n| *n <= 3);
            let n = n.ok_or_else(|| protocol_error("an array that is null or longer than three"))?;
            let mut parts: [&[u8]; 3] = [&[]; 3];
            for part in parts.iter_mut().take(n) {
                let Some((item, next)) = line(buf, at)? else { return Ok(None) };
                at = next;
                *part = match item[0] {
                    b':' => &item[1..],
                    b'$' => {
                        let len = usize::try_from(number(&item[1..])?).map_err(|_| protocol_error("a null string"))?;
                        if buf.len() < at + len + 2 {
                            return Ok(None);
                        }
                        if &buf[at + len..at + len + 2] != b"\r\n" {
                            return Err(protocol_error("a string longer than it said"));
                        }
                        at += len + 2;
                        &buf[at - len - 2..at - 2]
                    }
                    _ => return Err(protocol_error("an array of something other than strings")),
                };
            }
            Frame::Parts(parts, n)
        }
        _ => return Err(protocol_error("an unknown type of reply")),
    };
    Ok(Some((frame, at)))
}

/// The line that starts at `from` in `buf`, without its CRLF (never empty),
/// and where the next one starts; `None` while it has not all arrived.
fn line(buf: &[u8], from: usize) -> std::io::Result<Option<(&[u8], usize)>> {
    let rest = &buf[from..];
    let Some(newline) = rest.iter().position(|b| *b == b'\n') else { return Ok(None) };
    if newline < 2 || rest[newline - 1] != b'\r' {
        return Err(protocol_error("an empty line, or one that does not end in CRLF"));
    }
    Ok(Some((&rest[..newline - 1], from + newline + 1)))
}

fn number(digits: &[u8]) -> std::io::Result<i64> {
    std::str::from_utf8(digits).ok().and_then(|d| d.parse().ok()).ok_or_else(|| protocol_error("a malformed number"))
}

fn protocol_error(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("change notices: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_whole_or_not_at_all() {
        let message = b"*3\r\n$7\r\nmessage\r\n$9\r\np:changes\r\n$10\r\n12:a\r\nb\r\nc\r\n";
        let (frame, used) = parse_frame(message).unwrap().unwrap();
        assert_eq!(frame, Frame::Parts([b"message", b"p:changes", b"12:a\r\nb\r\nc"], 3), "a payload may hold CRLF");
        assert_eq!(used, message.len());
        for cut in 0..message.len() {
            assert_eq!(parse_frame(&message[..cut]).unwrap(), None, "{cut} bytes are not a reply yet");
        }
        let subscribed = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n+OK\r\n";
        let (frame, used) = parse_frame(subscribed).unwrap().unwrap();
        assert_eq!((frame, used), (Frame::Parts([b"subscribe", b"c", b"1"], 3), subscribed.len() - 5));
        assert_eq!(parse_frame(b"+OK\r\n").unwrap(), Some((Frame::Status(b"OK"), 5)));
        assert_eq!(parse_frame(b"-ERR no\r\n").unwrap(), Some((Frame::Error(b"ERR no"), 9)));
        assert_eq!(parse_frame(b":-3\r\n").unwrap(), Some((Frame::Int(-3), 5)));
        assert_eq!(
            parse_frame(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n").unwrap(),
            Some((Frame::Parts([b"pong", b"", b""], 2), 20))
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            &b"\r\n"[..],
            b"?x\r\n",
            b"+OK\n",
            b":12x\r\n",
            b"*4\r\n",
            b"*-1\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$2\r\nabc\r\n",
            b"*1\r\n+OK\r\n",
        ] {
            assert!(parse_frame(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
