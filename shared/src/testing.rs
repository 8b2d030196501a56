//! The test harness both crates' integration tests use (feature `testing`): a fresh database per test on
//! SQLite or on a real PostgreSQL, one test per backend from one function, and waiting for a condition.
//!
//! Without `TEST_DATABASE_URL`, a throwaway PostgreSQL cluster is started once per test process from the
//! server binaries on this machine (as the `postgres` user when run as root), and removed when the test
//! process ends, even when it is killed. With `TEST_DATABASE_URL=postgres://USER@HOST:PORT/postgres`, one
//! database per test is created on that server instead.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use sea_orm::{ConnectionTrait, Database};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one test per backend (modules `sqlite` and `postgres`) from `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::Backend::Postgres).await
                }
            )*
        }
    };
}

struct PgServer {
    admin_url: String,
    /// The guard process removes the cluster when this pipe closes, i.e. when the test process ends.
    _guard: Mutex<Child>,
}

static PG: OnceLock<PgServer> = OnceLock::new();

fn pg_bin_dir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        versions.reverse();
        candidates.extend(versions);
    }
    candidates
        .into_iter()
        .find(|d| {
            ["initdb", "postgres", "pg_isready"]
                .iter()
                .all(|b| d.join(b).is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL server binaries (initdb, postgres, pg_isready) were not found on PATH nor in \
                 /usr/lib/postgresql/*/bin. Install PostgreSQL (e.g. `apt-get install postgresql-15`) or set \
                 TEST_DATABASE_URL to a server the tests may create databases on."
            )
        })
}

const GUARD_SCRIPT: &str = r#"
set -eu
trap '' INT
dir=$(mktemp -d /tmp/te-test-pg.XXXXXX)
chmod 755 "$dir"
run() { "$@"; }
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; run() { runuser -u postgres -- "$@"; }; fi
run "$BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1; }
run "$BIN/postgres" -D "$dir/data" -p "$PORT" -k "$dir" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=500 \
    >"$dir/server.log" 2>&1 &
i=0
until "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; do
  i=$((i+1)); if [ $i -gt 300 ]; then cat "$dir/server.log" >&2; exit 1; fi; sleep 0.1
done
echo ready
cat >/dev/null || true
if [ -f "$dir/data/postmaster.pid" ]; then kill -INT "$(head -1 "$dir/data/postmaster.pid")" 2>/dev/null || true; fi
i=0; while [ -f "$dir/data/postmaster.pid" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
rm -rf "$dir"
"#;

fn start_pg() -> PgServer {
    if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
        return PgServer {
            admin_url: url,
            _guard: Mutex::new(Command::new("true").spawn().expect("spawn true")),
        };
    }
    let bin = pg_bin_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(GUARD_SCRIPT)
        .env("BIN", &bin)
        .env("PORT", port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start sh for the test PostgreSQL");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read from the PostgreSQL guard");
    assert_eq!(
        line.trim(),
        "ready",
        "the throwaway PostgreSQL did not start (binaries in {}); see the messages above",
        bin.display()
    );
    PgServer {
        admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        _guard: Mutex::new(child),
    }
}

async fn admin(sql: &str) {
    let admin_url = PG.get_or_init(start_pg).admin_url.clone();
    let admin = Database::connect(&admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    admin
        .execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    admin.close().await.ok();
}

/// A URL for a new, empty PostgreSQL database.
pub async fn fresh_pg_database() -> String {
    let name = format!("te_test_{}", uuid::Uuid::new_v4().simple());
    admin(&format!("CREATE DATABASE {name}")).await;
    let admin_url = &PG.get().expect("started above").admin_url;
    let base = admin_url
        .rsplit_once('/')
        .expect("database URL has a path")
        .0;
    format!("{base}/{name}")
}

/// Drops a PostgreSQL database under a running server (to make it stop answering).
pub async fn drop_pg_database(url: &str) {
    let name = url.rsplit('/').next().expect("a database URL");
    admin(&format!("DROP DATABASE {name} WITH (FORCE)")).await;
}

/// A fresh database URL of the backend, and the folder that holds it (SQLite; keep it alive while used).
pub async fn fresh_database(backend: Backend) -> (String, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
            (url, Some(dir))
        }
        Backend::Postgres => (fresh_pg_database().await, None),
    }
}

/// Polls `check` every 100 ms until it returns `Some`; fails the test after `limit` (time-dependent
/// behaviour is configured short in tests; the limit only stops a broken test from hanging).
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A PostgreSQL server of one test's own, which the test may stop and start again (a database outage),
/// removed when dropped.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// A database on it, for the test.
    pub url: String,
}

/// Runs a PostgreSQL binary, as the `postgres` user when this process is root (initdb refuses root).
fn as_postgres(bin: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"if [ "$(id -u)" = 0 ]; then exec runuser -u postgres -- "$@"; else exec "$@"; fi"#)
        .arg("sh")
        .arg(bin)
        .args(args);
    c.output().expect("run a PostgreSQL binary")
}

impl OwnPostgres {
    pub fn start() -> OwnPostgres {
        let bin = pg_bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(r#"[ "$(id -u)" = 0 ] && chown postgres "$1" || true"#)
            .arg("sh")
            .arg(dir.path())
            .status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let data = dir.path().join("data");
        let out = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = OwnPostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/te"),
            dir,
            bin,
            port,
        };
        pg.start_again();
        let out = as_postgres(
            &pg.bin.join("psql"),
            &[
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-c",
                "CREATE DATABASE te",
                "postgres",
            ],
        );
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    fn ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = as_postgres(&self.bin.join("pg_ctl"), &all);
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        self.ctl(&["-m", "fast", "-w", "stop"]);
    }

    /// Starts it (again).
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.ctl(&["-l", log.to_str().unwrap(), "-o", &opts, "-w", "start"]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}
