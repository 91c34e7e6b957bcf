//! The `progressd` binary as a child process, for tests that read its logs.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `progressd` with a clean environment plus `env`, on 127.0.0.1, output captured.
pub fn progressd(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_progressd"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PROGRESS_HOST", "127.0.0.1")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Waits until something listens on `port`.
pub fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "progressd did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then the exit code and everything the process wrote.
pub fn terminate(mut child: Child) -> (i32, String) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "progressd did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    child.stdout.take().unwrap().read_to_string(&mut logs).unwrap();
    (code, logs)
}
