//! The `progressd` binary: settings, logging, bind, run.
//! `progressd healthcheck` probes a running server instead (for containers);
//! `progressd migrate` applies the database schema and exits;
//! `progressd token` prints a scoped read token.

use std::process::ExitCode;

use progressd::store::{PostgresStore, PostgresStoreConfig};
use progressd::{Settings, app, telemetry};

// glibc malloc showed up at ~8% of a GET profile, with arena lock waits;
// mimalloc's thread-local free lists avoid both. Built without transparent
// huge pages (Cargo.toml, `no_thp`): issue 23's memory per event stream.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
progressd: tracks the progress of long-running jobs over HTTP

Usage: progressd [COMMAND]

Commands:
  serve        serve HTTP on PORT (the default)
  healthcheck  exit 0 when the local server's /healthz answers 200, else 1
  migrate      apply the PostgreSQL schema to DATABASE_URL and exit
  token        print a scoped read token signed with PROGRESS_SIGNING_KEYS:
                 progressd token --id book-42 [--ttl 3600] [--cancel]
                 progressd token --prefix user-7: [--ttl 3600] [--cancel]
               (--ttl in seconds, default 900, at most
               PROGRESS_MAX_TOKEN_TTL_SECONDS; --cancel: the token may also
               ask for its jobs to be cancelled)

Options:
  -h, --help     print this help
  -V, --version  print the version

Settings come from the environment (PORT, REDIS_URL, DATABASE_URL,
PROGRESS_*; see .env.example) or progressd.toml. With neither REDIS_URL
nor DATABASE_URL, records live in process memory.
";

#[tokio::main]
async fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    match command.as_deref() {
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version" | "version") => {
            println!("progressd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("progressd: {e}");
            return ExitCode::from(2);
        }
    };
    match command.as_deref() {
        None | Some("serve") => {}
        Some("healthcheck") => {
            let probe = progressd::healthcheck::probe(settings.host, settings.port, std::time::Duration::from_secs(3));
            return match probe.await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("progressd: unhealthy: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Some("migrate") => return migrate(&settings).await,
        Some("token") => return token(&settings),
        Some(other) => {
            eprintln!(
                "progressd: unknown command {other:?}; commands: serve (default), healthcheck, migrate, token (see --help)"
            );
            return ExitCode::from(2);
        }
    }
    telemetry::init(&settings);
    let shutdown = app::shutdown_signal();
    let listener = match app::bind(settings.host, settings.port) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("progressd: {e}");
            return ExitCode::from(1);
        }
    };
    match progressd::run(settings, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("progressd: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `progressd migrate`: applies the embedded migrations to `DATABASE_URL`.
/// 0 when the schema is up to date, 1 when it could not be applied, 2 when
/// there is no (valid) database to apply it to.
async fn migrate(settings: &Settings) -> ExitCode {
    let Some(url) = settings.database_url.clone() else {
        eprintln!("progressd: migrate needs DATABASE_URL (a postgres:// URL) or PGHOST; neither is set");
        return ExitCode::from(2);
    };
    let config = PostgresStoreConfig { url, pool_size: 1, timeout: settings.database_timeout() };
    let store = match PostgresStore::with_defaults(config, &settings.database_defaults()) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("progressd: invalid setting {}: {e}", settings.database_url_variable);
            return ExitCode::from(2);
        }
    };
    match store.migrate().await {
        Ok(()) => {
            println!("progressd: database schema is up to date");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("progressd: migrate failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// `progressd token`: a scoped read token on stdout (its expiry on
/// stderr), minted offline with the first key of `PROGRESS_SIGNING_KEYS`.
/// 2 on a bad argument or without keys.
fn token(settings: &Settings) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let (rights, ttl) = match progressd::tokens::parse_command(&args, settings.max_token_ttl_seconds) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("progressd: token: {e}");
            return ExitCode::from(2);
        }
    };
    let keys = match progressd::tokens::SigningKeys::new(&settings.signing_keys) {
        Ok(Some(keys)) => keys,
        Ok(None) => {
            eprintln!("progressd: token needs PROGRESS_SIGNING_KEYS (comma-separated kid:secret pairs); it is not set");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("progressd: invalid setting PROGRESS_SIGNING_KEYS: {e}");
            return ExitCode::from(2);
        }
    };
    match keys.mint_rights(&rights, ttl, progressd::tokens::now_seconds()) {
        Ok((token, exp)) => {
            println!("{token}");
            let at = progressd::domain::Timestamp(i64::try_from(exp).unwrap_or(i64::MAX / 1000).saturating_mul(1000));
            eprintln!("progressd: the token expires at {} (in {ttl} s)", at.to_rfc3339());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("progressd: token: {e}");
            ExitCode::from(1)
        }
    }
}
