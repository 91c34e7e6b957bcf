//! The failure-injection proxy itself (`tests/common/proxy.rs`), in front of a
//! local echo server or the shared Redis (PING and ECHO only: no keys).

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Long enough for any local round trip, short enough to keep tests quick.
const QUIET: Duration = Duration::from_millis(300);

/// An echo server on a free port: every connection gets its bytes back.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `msg` and reads exactly as many bytes back.
async fn round_trip(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    conn.write_all(msg).await?;
    let mut back = vec![0; msg.len()];
    conn.read_exact(&mut back).await?;
    Ok(back)
}

async fn assert_echoes(conn: &mut TcpStream, msg: &[u8]) {
    let back = timeout(QUIET, round_trip(conn, msg)).await.expect("echo arrives in time").expect("echo");
    assert_eq!(back, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_pipes_bytes_both_ways() {
    let proxy = Proxy::start(echo_server().await).await;
    assert_eq!(proxy.mode(), Mode::Forward);
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut conn, b"hello").await;
    // More than the proxy's buffer, in both directions at once.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let back = timeout(Duration::from_secs(5), round_trip(&mut conn, &big)).await.unwrap().unwrap();
    assert!(back == big, "1 MB came back intact");
    // A half-close is passed on: the echo server sees EOF and closes too.
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(QUIET, conn.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_to_redis_answers_ping_and_echo() {
    let redis_addr: SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let proxy = Proxy::start(redis_addr).await;
    let client = redis::Client::open(format!("redis://{}", proxy.addr())).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    let echo: String = redis::cmd("ECHO").arg("through the proxy").query_async(&mut conn).await.unwrap();
    assert_eq!(echo, "through the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_refuses_new_connections_and_forward_listens_again_on_the_same_port() {
    let proxy = Proxy::start(echo_server().await).await;
    let port = proxy.port();
    let mut existing = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut existing, b"before").await;
    for _ in 0..3 {
        proxy.set_mode(Mode::Refuse).await;
        let err = TcpStream::connect(proxy.addr()).await.expect_err("nothing listens");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        // Like a closed listening socket: established connections carry on.
        assert_echoes(&mut existing, b"during").await;
        proxy.set_mode(Mode::Forward).await;
        assert_eq!(proxy.port(), port);
        let mut conn = TcpStream::connect(proxy.addr()).await.expect("listening again");
        assert_echoes(&mut conn, b"after").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_resets_existing_and_new_connections() {
    let proxy = Proxy::start(echo_server().await).await;
    let mut existing = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut existing, b"before").await;
    proxy.set_mode(Mode::Reset).await;
    // The pending read sees the RST, not a clean EOF.
    let mut buf = [0u8; 16];
    let err = timeout(QUIET, existing.read(&mut buf)).await.expect("the reset arrives").expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    // A new connection is accepted, then reset at once: depending on timing
    // the client sees the RST as the result of connecting or of its first I/O.
    let fresh = async {
        let mut conn = TcpStream::connect(proxy.addr()).await?;
        round_trip(&mut conn, b"x").await
    };
    let err = timeout(QUIET, fresh).await.expect("the reset arrives").expect_err("reset");
    assert!(matches!(err.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe), "{err}");
    proxy.set_mode(Mode::Forward).await;
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut conn, b"after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_holds_bytes_on_existing_and_new_connections_until_forward() {
    let proxy = Proxy::start(echo_server().await).await;
    let mut existing = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut existing, b"before").await;
    proxy.set_mode(Mode::Blackhole).await;
    existing.write_all(b"held").await.unwrap();
    let mut buf = [0u8; 4];
    assert!(timeout(QUIET, existing.read_exact(&mut buf)).await.is_err(), "no bytes flow");
    let mut fresh = TcpStream::connect(proxy.addr()).await.expect("still accepted");
    assert!(timeout(QUIET, round_trip(&mut fresh, b"new")).await.is_err(), "no bytes flow");
    proxy.set_mode(Mode::Forward).await;
    // Nothing was lost: the held bytes now make their round trip.
    timeout(QUIET, existing.read_exact(&mut buf)).await.expect("flows again").unwrap();
    assert_eq!(&buf, b"held");
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_echoes(&mut conn, b"after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_times_out_and_answers_again_after_forward() {
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let client = redis::Client::open(format!("redis://{}", proxy.addr())).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    proxy.set_mode(Mode::Blackhole).await;
    let ping = redis::cmd("PING");
    let silent = timeout(QUIET, ping.query_async::<String>(&mut conn)).await;
    assert!(silent.is_err(), "PING timed out: {silent:?}");
    proxy.set_mode(Mode::Forward).await;
    let mut fresh = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = timeout(QUIET, redis::cmd("PING").query_async(&mut fresh)).await.unwrap().unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_proxy_closes_its_port_and_connections() {
    let proxy = Proxy::start(echo_server().await).await;
    let addr = proxy.addr();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    assert_echoes(&mut conn, b"before").await;
    drop(proxy);
    // Aborted tasks are dropped by the runtime shortly after.
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the port is closed");
    let mut buf = [0u8; 1];
    let closed = timeout(QUIET, conn.read(&mut buf)).await.expect("the connection closes");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}
