//! PostgreSQL for tests: a fresh database per test on the shared server
//! ([`TestDatabase`]), or a private cluster for tests that stop Postgres
//! ([`OwnPostgres`]). Both clean up after themselves on drop, also when the
//! test panics; neither ever touches another database or cluster.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

/// The shared test server's admin URL (`PROGRESS_TEST_DATABASE_URL`, default
/// the local one with trust auth).
pub fn admin_url() -> String {
    std::env::var("PROGRESS_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let path_start = url[authority_start..].find('/').map_or(url.len(), |i| authority_start + i);
    let query = url[path_start..].find('?').map_or("", |i| &url[path_start + i..]);
    format!("{}/{name}{query}", &url[..path_start])
}

fn unique_suffix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}_{nanos}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Runs one statement on `url` on a fresh connection.
async fn execute_on(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let connection = tokio::spawn(connection);
    let result = client.batch_execute(sql).await;
    drop(client);
    let _ = connection.await;
    result
}

/// A database of its own on the shared server, dropped with the value.
pub struct TestDatabase {
    name: String,
    url: String,
    admin: String,
}

impl TestDatabase {
    /// Creates `progressd_test_<pid>_<nanos>_<n>` on the shared server.
    pub async fn create() -> Self {
        let admin = admin_url();
        let name = format!("progressd_test_{}", unique_suffix());
        let mut attempt = 0;
        loop {
            attempt += 1;
            match execute_on(&admin, &format!("CREATE DATABASE \"{name}\"")).await {
                Ok(()) => break,
                // CREATE DATABASE copies template1 and fails while anyone else
                // (another session's CREATE DATABASE) is connected to it.
                Err(e) if attempt < 5 && e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => {
                    panic!("cannot create test database {name} on the test server (PROGRESS_TEST_DATABASE_URL): {e:?}")
                }
            }
        }
        Self { url: with_database(&admin, &name), name, admin }
    }

    /// `postgres://…/<name>`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A plain connection to this database, for looking at rows directly.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.url, NoTls).await.expect("the test database accepts connections");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which must not block on itself:
        // a thread of its own with a runtime of its own. FORCE ends the
        // connections a store's pool may still hold.
        let (admin, sql) = (self.admin.clone(), format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name));
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), execute_on(&admin, &sql)).await })
        })
        .join();
        match dropped {
            Ok(Ok(Ok(()))) => {}
            other => eprintln!("could not drop test database {}: {other:?}", self.name),
        }
    }
}

/// A Postgres cluster this test created, started and alone stops: for tests
/// that take Postgres away. Runs as the `postgres` OS user when the tests run
/// as root (Postgres refuses to run as root), with trust auth, a socket in
/// its own directory and no fsync.
pub struct OwnPostgres {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    owner: Option<(u32, u32)>,
    last_start: Duration,
}

impl OwnPostgres {
    /// `initdb` into a fresh directory, then starts the server on a free port.
    pub fn start() -> Self {
        let started = Instant::now();
        let owner = if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0) == 0 {
            Some(os_user("postgres").expect("tests run as root: an OS user `postgres` runs the cluster"))
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!("progressd-pg-{}", unique_suffix()));
        std::fs::create_dir(&dir).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        let mut own = Self { dir, port: free_port(), child: None, owner, last_start: Duration::ZERO };
        let output = own
            .command("initdb")
            .args(["-D"])
            .arg(own.data_dir())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"])
            .stdin(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(output.status.success(), "initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        own.launch();
        own.last_start = started.elapsed();
        own
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on (the same after [`OwnPostgres::start_again`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How long the last start took (initdb included for the first).
    pub fn last_start(&self) -> Duration {
        self.last_start
    }

    /// Fast shutdown (SIGINT to the process this fixture started); waits for it to exit.
    pub fn stop(&mut self) {
        signal_child(&mut self.child, "-INT", Duration::from_secs(10));
    }

    /// SIGKILL to the postmaster this fixture started (its backends notice
    /// and exit by themselves): a crash, for chaos runs.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// The pid of the postmaster this fixture started, while it runs (its
    /// backends are its children).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The cluster's directory (data, socket and `postgres.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the stopped (or killed) server again on the same port and data directory.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again on a running server");
        let started = Instant::now();
        self.launch();
        self.last_start = started.elapsed();
    }

    /// Replaces the cluster's `pg_hba.conf` with `contents` and tells the
    /// running server to reload it (SIGHUP to the process this fixture
    /// started). The reload is asynchronous: poll for its effect.
    pub fn set_hba(&self, contents: &str) {
        let path = self.data_dir().join("pg_hba.conf");
        std::fs::write(&path, contents).unwrap();
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
        if let Some(child) = &self.child {
            let _ = Command::new("kill").args(["-HUP", &child.id().to_string()]).status();
        }
    }

    /// Writes `contents` to `name` in the cluster's directory (outside its
    /// data directory), owned by the cluster's OS user with `mode`, e.g. a
    /// TLS key, which Postgres wants 0600 and its own. Returns the path.
    pub fn install_file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
        path
    }

    /// Appends lines to `postgresql.conf`; they take effect at the next
    /// [`OwnPostgres::restart`] (or reload).
    pub fn append_conf(&self, lines: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).open(self.data_dir().join("postgresql.conf")).unwrap();
        file.write_all(format!("\n{lines}\n").as_bytes()).unwrap();
    }

    /// Fast shutdown, then start again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// libpq key/value connection string over the cluster's Unix socket, as
    /// the `postgres` user to `database`: what a `local` line in
    /// pg_hba.conf lets in, whatever the TCP lines say.
    pub fn local_conninfo(&self, database: &str) -> String {
        format!("host={} port={} user=postgres dbname={database}", self.dir.display(), self.port)
    }

    /// A plain connection over the Unix socket (see [`OwnPostgres::local_conninfo`]).
    pub async fn connect_local(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.local_conninfo(database), NoTls)
            .await
            .unwrap_or_else(|e| panic!("the cluster accepts a local connection: {e}: {}", self.log()));
        tokio::spawn(connection);
        client
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A command from the Postgres binaries, run as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(bin_dir().join(program));
        command.current_dir(&self.dir).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Starts the postmaster and waits until it answers. After a
    /// [`OwnPostgres::kill`] the orphaned backends may still hold the shared
    /// memory for a while, and the new postmaster exits at once: it is
    /// started again until it stays up.
    fn launch(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log =
                std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("postgres.log")).unwrap();
            let child = self
                .command("postgres")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-p", &self.port.to_string(), "-k"])
                .arg(&self.dir)
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off"])
                .args(["-c", "synchronous_commit=off", "-c", "shared_buffers=16MB", "-c", "max_connections=100"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("postgres runs");
            self.child = Some(child);
            loop {
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    self.child = None;
                    assert!(Instant::now() < deadline, "postgres exited with {status}: {}", self.log());
                    break;
                }
                let ready = self
                    .command("pg_isready")
                    .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-t", "1"])
                    .status()
                    .is_ok_and(|s| s.success());
                if ready {
                    return;
                }
                assert!(Instant::now() < deadline, "postgres on {} did not start: {}", self.port, self.log());
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
        // Orphaned backends of a killed postmaster may still be exiting.
        for _ in 0..50 {
            if std::fs::remove_dir_all(&self.dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// SIGKILL to a child this process started, and reaps it.
pub fn kill_child(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends `signal` (as `kill` spells it) to a child this process started,
/// waits up to `grace` for it to exit, then SIGKILLs it; reaps it either way.
pub fn signal_child(child: &mut Option<Child>, signal: &str, grace: Duration) {
    let Some(mut child) = child.take() else { return };
    let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
    let deadline = Instant::now() + grace;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.wait();
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The newest installed Postgres's binaries (`/usr/lib/postgresql/<version>/bin`).
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres is installed under /usr/lib/postgresql")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect("an initdb under /usr/lib/postgresql/*/bin")
}

/// The uid and gid of an OS user, from /etc/passwd.
fn os_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string(Path::new("/etc/passwd")).ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
    })
}
