//! An in-process TCP proxy for failure tests: put it between the service and
//! a dependency (Redis, PostgreSQL), point the service at [`Proxy::addr`],
//! and switch [`Mode`]s to make the dependency refuse, reset or go silent.
//!
//! A switch reaches existing connections as well as new ones: every piped
//! connection watches the mode through a `tokio::sync::watch` channel.
//! [`Proxy::set_mode`] returns once new connections see the new mode (the
//! listener is closed for `Refuse` and bound again, on the same port, when
//! leaving it) and, for `Reset`, once every existing connection was reset. Dropping the proxy aborts all its tasks.
//!
//! Works both as `pub mod proxy;` in `tests/common/mod.rs` and as
//! `#[path = "common/proxy.rs"] mod proxy;` in a test file.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pipe bytes both ways (the initial mode).
    Forward,
    /// Nothing listens: new connections are refused. Like a closed listening
    /// socket in real TCP, this leaves established connections forwarding;
    /// switch to `Reset` first to simulate a dead process.
    Refuse,
    /// Reset (RST) every existing connection, and accept and reset at once
    /// every new one (whose client then sees `ConnectionReset` from
    /// `connect` or from its first read or write, depending on timing).
    Reset,
    /// Connections, existing and new, stay open but no bytes flow either way
    /// (bytes already being written when the switch happens still arrive).
    /// Held bytes flow again after a switch to `Forward`.
    Blackhole,
}

/// A TCP proxy on 127.0.0.1 in front of one target address.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    /// The accept loop; `None` while in `Refuse` (no listener then).
    acceptor: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port, forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0))).expect("proxy binds a free port");
        let addr = listener.local_addr().unwrap();
        let proxy = Self {
            addr,
            target,
            mode: watch::Sender::new(Mode::Forward),
            acceptor: tokio::sync::Mutex::new(None),
            conns: Arc::new(Mutex::new(JoinSet::new())),
        };
        *proxy.acceptor.lock().await = Some(proxy.spawn_acceptor(listener));
        proxy
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to (the same in every mode).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Switches mode for existing and new connections.
    pub async fn set_mode(&self, mode: Mode) {
        let mut acceptor = self.acceptor.lock().await;
        self.mode.send_replace(mode);
        if mode == Mode::Reset {
            // A connection watches only the latest mode: wait until every
            // one has seen this one and reset, so that a switch to another
            // mode right after (say `Refuse`) cannot hide it from them.
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let open = {
                    let mut conns = self.conns.lock().unwrap();
                    while conns.try_join_next().is_some() {}
                    conns.len()
                };
                if open == 0 || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        match (mode, acceptor.take()) {
            (Mode::Refuse, Some(task)) => {
                task.abort();
                let _ = task.await; // the listener is closed once this returns
            }
            (Mode::Refuse, None) => {}
            (_, Some(task)) => *acceptor = Some(task),
            (_, None) => *acceptor = Some(self.spawn_acceptor(listen_again(self.addr).await)),
        }
    }

    fn spawn_acceptor(&self, listener: TcpListener) -> JoinHandle<()> {
        let (target, mode, conns) = (self.target, self.mode.subscribe(), self.conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await; // e.g. out of file descriptors
                    continue;
                };
                if *mode.borrow() == Mode::Reset {
                    reset(&client);
                    continue;
                }
                let mut conns = conns.lock().unwrap();
                while conns.try_join_next().is_some() {} // reap finished connections
                conns.spawn(serve(client, target, mode.clone()));
            }
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.acceptor.get_mut().take() {
            task.abort();
        }
        self.conns.lock().unwrap().abort_all();
    }
}

/// A listening socket with SO_REUSEADDR, so that the port can be bound again
/// while connections accepted earlier on it (or in TIME_WAIT) remain.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Binds `addr` again, retrying for a while in case something else holds it.
async fn listen_again(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match listen(addr) {
            Ok(listener) => return listener,
            Err(e) if Instant::now() > deadline => panic!("proxy could not bind {addr} again: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Closes the socket with RST instead of FIN when it is dropped.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// One proxied connection: pipes both ways until both sides have finished,
/// an error occurs (then both sides are reset) or the mode becomes `Reset`.
async fn serve(mut client: TcpStream, target: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return reset(&client);
    };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    let piped = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let mut reset_requested = mode.clone();
        tokio::select! {
            piped = async {
                tokio::try_join!(
                    pump(client_read, upstream_write, mode.clone()),
                    pump(upstream_read, client_write, mode.clone()),
                )
            } => piped.is_ok(),
            _ = reset_requested.wait_for(|m| *m == Mode::Reset) => false,
        }
    };
    if !piped {
        reset(&client);
        reset(&upstream);
    }
}

/// Copies one direction without losing bytes across mode switches: bytes
/// read before a switch to `Blackhole` are held until forwarding resumes.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut mode: watch::Receiver<Mode>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let flowing = |m: &Mode| *m != Mode::Blackhole;
        if mode.wait_for(flowing).await.is_err() {
            return Err(io::ErrorKind::BrokenPipe.into()); // the proxy is gone
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => read?,
            _ = mode.wait_for(|m| *m == Mode::Blackhole) => continue,
        };
        if n == 0 {
            return to.shutdown().await; // pass the half-close on
        }
        if mode.wait_for(flowing).await.is_err() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        to.write_all(&buf[..n]).await?;
    }
}
