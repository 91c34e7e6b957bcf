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
