//! A throwaway PostgreSQL cluster from the locally installed server binaries, for the demo,
//! the benchmarks and the tests. Owns nothing but that cluster's life.
//!
//! The cluster is run by a small supervising shell that reads commands on its stdin. When this
//! process exits (however: normally, by panic, or by SIGKILL) the pipe closes, the shell stops
//! the server and removes its directory, so nothing is left running. As root, `initdb` refuses
//! to run, so the shell runs as the `postgres` OS user through `runuser`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use secrecy::SecretString;

const SUPERVISOR: &str = r#"
set -u
bindir="$1"
dir=$(mktemp -d "${TMPDIR:-/tmp}/lms-sync-pg.XXXXXX") || exit 1
cleanup() {
  "$bindir/pg_ctl" -D "$dir/standby" -m immediate stop >/dev/null 2>&1
  "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1; rm -rf "$dir"
}
trap cleanup EXIT
"$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 \
  || "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
  || { echo "ERROR initdb failed: $(tail -n 3 "$dir/initdb.log" | tr '\n' ' ')"; exit 1; }
opts="-c listen_addresses='' -k $dir -c max_connections=200 -c shared_buffers=128MB"
# Tests trade durability for speed; the benchmark (durable) runs with the server's defaults.
[ "${2:-fast}" = durable ] || opts="$opts -c fsync=off -c full_page_writes=off"
# A port: listen on it on 127.0.0.1 too (the socket's name follows the port).
[ -z "${3:-}" ] || opts="$opts -c listen_addresses=127.0.0.1 -p $3"
start() { "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o "$opts" start >/dev/null 2>&1; }
start || { echo "ERROR postgres did not start: $(tail -n 3 "$dir/server.log" | tr '\n' ' ')"; exit 1; }
echo "READY $dir"
while read -r cmd; do
  case "$cmd" in
    stop) "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1; echo DONE ;;
    kill) "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1; echo DONE ;;
    start) start; echo DONE ;;
    # A hot standby streaming from the server, on a socket directory of its own (an analysts'
    # read replica): pg_basebackup with its recovery settings, then started.
    standby)
      p=""; [ -z "${3:-}" ] || p="-p $3"
      mkdir -p "$dir/replica" \
        && "$bindir/pg_basebackup" -h "$dir" $p -U postgres -D "$dir/standby" -R -X stream --checkpoint=fast --no-sync >"$dir/basebackup.log" 2>&1 \
        && "$bindir/pg_ctl" -D "$dir/standby" -l "$dir/standby.log" -w -t 60 \
             -o "-c listen_addresses='' -k $dir/replica $p -c max_connections=200" start >/dev/null 2>&1 \
        && echo "STANDBY $dir/replica" \
        || echo "ERROR standby: $(tail -n 3 "$dir/basebackup.log" "$dir/standby.log" 2>/dev/null | tr '\n' ' ')" ;;
    # The standby takes the server's place, as a managed database's failover does: the server
    # crashes, and the standby, started again on the server's socket and port, is promoted. It
    # refuses connections until then (hot_standby off), as the endpoint of a managed database
    # answers nothing until the failover is done.
    failover)
      "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1
      "$bindir/pg_ctl" -D "$dir/standby" -m fast -w stop >/dev/null 2>&1
      rm -rf "$dir/data" && mv "$dir/standby" "$dir/data" \
        && "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -t 60 -o "$opts -c hot_standby=off" start >/dev/null 2>&1 \
        && { n=0; until "$bindir/pg_ctl" -D "$dir/data" -w -t 60 promote >/dev/null 2>&1; do
               n=$((n + 1)); [ $n -lt 100 ] || break; sleep 0.1; done; [ $n -lt 100 ]; } \
        && echo DONE || echo "ERROR failover: $(tail -n 3 "$dir/server.log" | tr '\n' ' ')" ;;
    # A switchover where nothing moves in front of the servers (database.url names both): the
    # server stops, and the standby is promoted where it is, on its own socket.
    switchover)
      "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1
      "$bindir/pg_ctl" -D "$dir/standby" -w -t 60 promote >/dev/null 2>&1 \
        && echo DONE || echo "ERROR switchover: $(tail -n 3 "$dir/standby.log" | tr '\n' ' ')" ;;
    *) echo "ERROR unknown command" ;;
  esac
done
"#;

struct Supervisor {
    child: Child,
    /// `None` once closed: that tells the supervisor to stop the server and clean up.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// A running throwaway cluster, reachable over a Unix socket as the superuser `postgres`.
pub struct TempPostgres {
    inner: Mutex<Supervisor>,
    socket_dir: PathBuf,
    /// The TCP port on 127.0.0.1, when it listens on one.
    port: Option<u16>,
}

impl std::fmt::Debug for TempPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempPostgres")
            .field("socket_dir", &self.socket_dir)
            .finish()
    }
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `PATH` first, then Debian's layout.
/// An `initdb` on `PATH` that is a link (to Debian's directory, say) counts for where it
/// leads, where the other tools (`pg_basebackup`) are too.
pub fn find_bindir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
            .map(|d| {
                std::fs::canonicalize(d.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|real| real.join("pg_ctl").is_file())
                    .unwrap_or(d)
            })
    });
    on_path.or_else(|| {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|d| d.join("initdb").is_file())
            .collect();
        dirs.sort();
        dirs.pop()
    })
}

fn is_root() -> bool {
    // Avoids unsafe libc calls: the effective uid is in /proc on Linux.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

impl TempPostgres {
    /// Creates and starts a cluster with fsync off (tests, the demo). Blocking; takes a second
    /// or two.
    pub fn start() -> anyhow::Result<TempPostgres> {
        Self::start_with(false, None)
    }

    /// [`TempPostgres::start`], listening on `127.0.0.1:port` too ([`TempPostgres::tcp_url`]),
    /// for what only a TCP connection has (keepalives, a cut network).
    pub fn start_tcp(port: u16) -> anyhow::Result<TempPostgres> {
        Self::start_with(false, Some(port))
    }

    /// Creates and starts a cluster with the server's default durability (fsync,
    /// full_page_writes and synchronous_commit on), as production runs it: the benchmark's.
    pub fn start_durable() -> anyhow::Result<TempPostgres> {
        Self::start_with(true, None)
    }

    fn start_with(durable: bool, port: Option<u16>) -> anyhow::Result<TempPostgres> {
        let bindir = find_bindir().ok_or_else(|| {
            anyhow::anyhow!("no PostgreSQL server binaries found (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin; install PostgreSQL or set DATABASE_URL")
        })?;
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", SUPERVISOR, "sh"]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", SUPERVISOR, "sh"]);
            c
        };
        cmd.arg(&bindir)
            .arg(if durable { "durable" } else { "fast" })
            .arg(port.map(|p| p.to_string()).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // A private temp dir that the postgres user can write.
            .env("TMPDIR", "/tmp");
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start the PostgreSQL supervisor: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let line = line.trim();
        let Some(dir) = line.strip_prefix("READY ") else {
            let _ = child.wait();
            anyhow::bail!(
                "throwaway PostgreSQL failed to start: {}",
                if line.is_empty() {
                    "no output (is the `postgres` OS user present when running as root?)"
                } else {
                    line
                }
            );
        };
        Ok(TempPostgres {
            socket_dir: PathBuf::from(dir),
            port,
            inner: Mutex::new(Supervisor {
                child,
                stdin: Some(stdin),
                stdout,
            }),
        })
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "postgres://postgres@localhost{port}/{db}?host={}",
            self.socket_dir.display()
        )
    }

    /// The URL of database `db` over TCP, for a cluster started with [`TempPostgres::start_tcp`].
    pub fn tcp_url(&self, db: &str) -> Option<String> {
        self.port
            .map(|p| format!("postgres://postgres@127.0.0.1:{p}/{db}"))
    }

    pub fn url_secret(&self, db: &str) -> SecretString {
        SecretString::from(self.url(db))
    }

    /// Sends the supervisor `cmd` and returns its answer (one line).
    fn ask(&self, cmd: &str) -> anyhow::Result<String> {
        let mut guard = self.inner.lock().expect("pg supervisor");
        let sup = &mut *guard;
        let stdin = sup.stdin.as_mut().expect("supervisor running");
        writeln!(stdin, "{cmd}")?;
        stdin.flush()?;
        let mut line = String::new();
        sup.stdout.read_line(&mut line)?;
        Ok(line.trim().to_string())
    }

    fn command(&self, cmd: &str) -> anyhow::Result<()> {
        match self.ask(cmd)? {
            done if done == "DONE" => Ok(()),
            other => anyhow::bail!("postgres supervisor: {other}"),
        }
    }

    /// Starts a hot standby of this cluster (a read replica streaming its WAL, as analysts'
    /// tools often read from) and returns its URL for database `db`. Blocking; once per
    /// cluster.
    pub fn start_standby(&self, db: &str) -> anyhow::Result<String> {
        let line = self.ask("standby")?;
        let Some(socket_dir) = line.strip_prefix("STANDBY ") else {
            anyhow::bail!("postgres supervisor: {line}")
        };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        Ok(format!(
            "postgres://postgres@localhost{port}/{db}?host={socket_dir}"
        ))
    }

    /// Fails over to the standby ([`TempPostgres::start_standby`]): the server crashes, and the
    /// standby takes its socket and port and is promoted, with whatever WAL it had received.
    /// Blocking.
    pub fn fail_over(&self) -> anyhow::Result<()> {
        self.command("failover")
    }

    /// Switches over to the standby ([`TempPostgres::start_standby`]) where it is: the server
    /// stops, and the standby, on its own socket, is promoted. Blocking.
    pub fn switch_over(&self) -> anyhow::Result<()> {
        self.command("switchover")
    }

    /// Stops the server (fast shutdown: connections are terminated). Blocking.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.command("stop")
    }

    /// Stops the server as a crash would (immediate shutdown, recovery on next start). Blocking.
    pub fn crash(&self) -> anyhow::Result<()> {
        self.command("kill")
    }

    /// Starts a stopped server again and waits until it accepts connections. Blocking.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.command("start")
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.inner.lock() {
            guard.stdin.take();
            let _ = guard.child.wait();
        }
    }
}
