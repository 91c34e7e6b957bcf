//! `progressd healthcheck`: asks the local server's `/healthz` and exits
//! 0 or 1, so a container health check needs no curl in the image.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether `GET /healthz` answers 200 within `timeout`, asked on the
/// address the server listens on (`host`), or on 127.0.0.1 when it listens
/// on every address.
pub async fn probe(host: Option<IpAddr>, port: u16, timeout: Duration) -> Result<(), String> {
    let address = match host {
        Some(ip) if !ip.is_unspecified() => ip,
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let attempt = async {
        let mut stream = TcpStream::connect((address, port)).await.map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.map_err(|e| e.to_string())?;
        if head.starts_with(b"HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("unexpected answer {:?}", String::from_utf8_lossy(&head)))
        }
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}
