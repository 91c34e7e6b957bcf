use super::*;

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(75),
        max_connections: 1,
        peer_address: false,
    }
}

#[test]
fn the_open_file_limit_bounds_the_cap_only_of_connections_that_open_files() {
    let files = rlimit::increase_nofile_limit(u64::MAX).expect("the open-file limit");
    let requested = 1_000_000;
    let env = [("PROGRESS_MAX_CONNECTIONS".to_string(), requested.to_string())].into_iter().collect();
    let settings = Settings::from_env_without_file(env).expect("settings");
    assert_eq!(Limits::from_settings(&settings, false).max_connections, requested);
    let sockets = Limits::from_settings(&settings, true).max_connections;
    if files < 2 * requested as u64 {
        assert!(sockets as u64 <= files, "{sockets} sockets under a limit of {files} files");
    } else {
        assert_eq!(sockets, requested, "a limit of {files} files allows them all");
    }
}

fn after(activity: &Activity) -> Option<Duration> {
    activity.deadline().map(|d| d - activity.epoch)
}

#[tokio::test(start_paused = true)]
async fn the_first_head_is_timed_from_the_accept() {
    let activity = Activity::new(limits());
    tokio::time::advance(Duration::from_secs(4)).await;
    activity.bytes_read();
    assert_eq!(after(&activity), Some(Duration::from_secs(10)), "the first byte does not restart it");
    assert_eq!(activity.expired(), None);
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(activity.expired(), Some(true));
}

#[tokio::test(start_paused = true)]
async fn no_deadline_while_a_request_is_in_progress() {
    let activity = Activity::new(limits());
    activity.request_started();
    assert_eq!(activity.deadline(), None);
    activity.bytes_read();
    tokio::time::advance(Duration::from_secs(600)).await;
    assert_eq!((activity.deadline(), activity.expired()), (None, None), "a request body, or a stream");
}

#[tokio::test(start_paused = true)]
async fn between_requests_the_idle_timeout_then_the_header_timeout() {
    let activity = Activity::new(limits());
    activity.request_started();
    tokio::time::advance(Duration::from_secs(1)).await;
    activity.request_ended();
    assert_eq!(after(&activity), Some(Duration::from_secs(76)));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(activity.expired(), None);
    activity.bytes_read();
    assert_eq!(after(&activity), Some(Duration::from_secs(41)), "the next head's first byte");
    activity.bytes_read();
    assert_eq!(after(&activity), Some(Duration::from_secs(41)), "later bytes of the same head");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(activity.expired(), Some(true));
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_expires_as_idle() {
    let activity = Activity::new(limits());
    activity.request_started();
    activity.request_ended();
    // As the connection's loop does after each poll of the connection.
    assert_eq!(after(&activity), Some(Duration::from_secs(75)));
    tokio::time::advance(Duration::from_secs(75)).await;
    assert_eq!(activity.expired(), Some(false));
}

#[tokio::test(start_paused = true)]
async fn a_new_deadline_is_timed_when_it_is_read() {
    let activity = Activity::new(limits());
    activity.request_started();
    tokio::time::advance(Duration::from_secs(1)).await;
    activity.request_ended();
    activity.bytes_read();
    tokio::time::advance(Duration::from_millis(3)).await;
    assert_eq!(after(&activity), Some(Duration::from_millis(11_003)), "the last one set, from its reading");
    activity.request_started();
    assert_eq!(after(&activity), None, "a request in progress has none, pending or not");
}

/// Connections made in the process ([`Listener`] over a channel of
/// `tokio::io::duplex` halves, as `examples/sse_memory.rs` does).
struct Piped(tokio::sync::mpsc::UnboundedReceiver<tokio::io::DuplexStream>);

impl Listener for Piped {
    type Io = tokio::io::DuplexStream;
    const OPENS_FILES: bool = false;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        match self.0.recv().await {
            Some(io) => (io, SocketAddr::from(([127, 0, 0, 1], 1))),
            None => std::future::pending().await,
        }
    }

    fn refuse(mut io: Self::Io) {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = io.write_all(REFUSAL).await;
        });
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// A request over `sender`, and the answer's status and body.
async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use http_body_util::BodyExt;
    sender.ready().await.expect("the connection takes a request");
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "piped")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = sender.send_request(request).await.expect("an answer");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("the body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// progressd serves connections from any [`Listener`] as from a socket:
/// requests on a kept-alive connection, the connection cap (a connection
/// past it is answered 503 and closed), and a graceful stop.
#[tokio::test]
async fn the_service_runs_over_a_listener_of_streams_made_in_the_process() {
    use tokio::io::AsyncReadExt;
    let env = [("PROGRESS_MAX_CONNECTIONS".to_string(), "1".to_string())].into_iter().collect();
    let settings = Settings::from_env_without_file(env).expect("settings");
    let (connect, accepted) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::app::run(settings, Piped(accepted), async move {
        let _ = stopped.await;
    }));

    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    connect.send(theirs).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(ours)).await.unwrap();
    let conn = tokio::spawn(conn);
    assert_eq!(send(&mut sender, "GET", "/healthz", "").await, (200, r#"{"status":"ok"}"#.to_string()));
    let (status, _) = send(&mut sender, "PUT", "/progress/piped-1", r#"{"status":"running","current":2}"#).await;
    assert_eq!(status, 201);
    let (status, body) = send(&mut sender, "GET", "/progress/piped-1", "").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""id":"piped-1""#) && body.contains(r#""current":2"#), "{body}");

    // The cap is one connection, and the first is still open.
    let (mut second, theirs) = tokio::io::duplex(4096);
    connect.send(theirs).unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert_eq!(answer, REFUSAL, "{}", String::from_utf8_lossy(&answer));

    stop.send(()).unwrap();
    drop(sender);
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("a graceful stop").unwrap().unwrap();
    conn.await.unwrap().unwrap();
}
