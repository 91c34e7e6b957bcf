//! A `redis-server` process that one test starts, stops and restarts on its
//! own free port, for tests that make Redis die or come back. It never
//! touches the shared Redis on 6379.
//!
//! Works both as `pub mod redis_server;` in `tests/common/mod.rs` and as
//! `#[path = "common/redis_server.rs"] mod redis_server;` in a test file: it
//! refers to nothing outside itself.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh `redis-server` may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` this test started and alone stops (also on drop).
pub struct OwnRedis {
    port: u16,
    child: Option<Child>,
    /// Extra `redis-server` arguments, kept for restarts.
    extra_args: Vec<String>,
}

impl OwnRedis {
    /// Starts an empty, non-persistent `redis-server` on a free 127.0.0.1
    /// port and returns once it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`OwnRedis::start`], with extra `redis-server` arguments (e.g.
    /// `["--requirepass", "pw"]`), used again by [`OwnRedis::start_again`].
    pub fn start_with(extra_args: &[&str]) -> Self {
        // The free port can be taken between choosing and binding it; then
        // redis-server exits at once and another port is tried.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut redis = Self { port, child: None, extra_args: extra_args.iter().map(|a| a.to_string()).collect() };
            if redis.try_start().is_ok() {
                return redis;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, e.g. for a proxy in front of it.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The pid of the `redis-server` process, while it runs (e.g. to pause
    /// it with SIGSTOP and SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is started and has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process (SIGKILL to its own pid) and reaps it. Its data is
    /// gone. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new, empty `redis-server` on the same port (stopping the old
    /// one first if it still runs) and returns once it answers PING.
    pub fn start_again(&mut self) {
        self.stop();
        if let Err(e) = self.try_start() {
            panic!("redis-server did not start again on port {}: {e}", self.port);
        }
    }

    fn try_start(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed and on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                self.child = None;
                return Err(format!("redis-server exited with {status} (port in use?)"));
            }
            if answers_ping(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("no PONG within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answers_ping(port: u16) -> bool {
    let timeout = Duration::from_millis(500);
    let Ok(mut conn) = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(timeout));
    let mut reply = [0u8; 7];
    // `-NOAUTH …` is a server with `--requirepass` that is up.
    conn.write_all(b"PING\r\n").is_ok()
        && conn.read_exact(&mut reply).is_ok()
        && (&reply == b"+PONG\r\n" || &reply == b"-NOAUTH")
}
