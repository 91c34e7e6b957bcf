//! The `progressd` binary as an operator runs it: settings from the
//! environment, one clear line for a bad value, logs without secrets,
//! JSON logs on request, and a clean exit on SIGTERM.

mod common;

use common::binary::{free_port, progressd, terminate, wait_ready};

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    for (var, value) in [
        ("PROGRESS_TTL_SECONDS", "tomorrow"),
        ("PORT", "http"),
        ("PROGRESS_MAX_BODY_BYTES", "-1"),
        ("PROGRESS_LOG_FORMAT", "yaml"),
        ("PROGRESS_HEARTBEAT_SECONDS", "0"),
        ("REDIS_URL", "postgres://user:pw@host/db"),
    ] {
        let out = progressd(&[(var, value)]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
        assert!(!stderr.contains("pw@"), "{stderr}");
    }
}

#[test]
fn a_missing_config_file_named_by_progress_config_is_an_error() {
    let out = progressd(&[("PROGRESS_CONFIG", "/nonexistent/progressd.toml")]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("PROGRESS_CONFIG"));
}

#[test]
fn sigterm_exits_zero_and_the_redis_password_is_never_logged() {
    let port = free_port();
    let dead_redis = free_port();
    let url = format!("redis://default:s3cret-pw@127.0.0.1:{dead_redis}/0");
    let child = progressd(&[("PORT", &port.to_string()), ("REDIS_URL", &url), ("RUST_LOG", "debug")]).spawn().unwrap();
    wait_ready(port);
    let client = reqwest::blocking::Client::new();
    let res = client.get(format!("http://127.0.0.1:{port}/progress/x")).send().unwrap();
    assert_eq!(res.status(), 503);
    let body = res.text().unwrap();
    assert!(!body.contains("s3cret"), "{body}");
    let (code, logs) = terminate(child);
    assert_eq!(code, 0, "{logs}");
    assert!(!logs.contains("s3cret"), "{logs}");
    assert!(logs.contains("default:****@"), "the redacted URL is logged: {logs}");
    assert!(logs.contains("request{method=GET uri=/progress/x request_id="), "the request's span: {logs}");
    assert!(!logs.contains('\x1b'), "no colour escapes when the logs go to a pipe, as on a platform: {logs}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let port = free_port();
    let child = progressd(&[("PORT", &port.to_string()), ("PROGRESS_LOG_FORMAT", "json")]).spawn().unwrap();
    wait_ready(port);
    let (code, logs) = terminate(child);
    assert_eq!(code, 0);
    assert!(logs.lines().count() >= 3, "{logs}");
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
    }
    assert!(logs.contains("process memory"), "the embedded default is announced: {logs}");
}

#[test]
fn healthcheck_subcommand_probes_the_running_server() {
    let port = free_port();
    let out = progressd(&[("PORT", &port.to_string())]).arg("healthcheck").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "nothing listens yet");
    let child = progressd(&[("PORT", &port.to_string())]).spawn().unwrap();
    wait_ready(port);
    let out = progressd(&[("PORT", &port.to_string())]).arg("healthcheck").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, _) = terminate(child);
    assert_eq!(code, 0);
}
