//! How this process's sessions reach PostgreSQL: over a Unix-domain socket, in plain TCP, or
//! in TLS, and whether the server's certificate is checked. Said when `run` and `sync` start
//! and by `lms-sync check`, so that an operator need not guess what `sslmode=prefer` (sqlx's
//! default: TLS when the server offers it, its certificate unchecked) gave.

use sqlx::postgres::PgSslMode;

use super::{Store, StoreError};

/// How one session reached the server, as the server saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// A Unix-domain socket: the same host; TLS does not apply.
    Socket,
    /// TCP without TLS; `loopback` when from the server's own host.
    Plain { loopback: bool },
    /// TCP in TLS (`version`: `TLSv1.3`, …).
    Tls { version: String, loopback: bool },
}

/// A session's [`Transport`] and the `sslmode` in force (after `require` with a CA file
/// became `verify-ca`, see `connect_options`).
#[derive(Debug, Clone)]
pub struct DatabaseConnection {
    pub transport: Transport,
    pub mode: PgSslMode,
}

fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

const VERIFY: &str = "set sslmode=verify-full with sslrootcert (the CA that signed the server's \
                      certificate) in database.url";

impl DatabaseConnection {
    /// Whether what goes over it could be read, or the server stood in for, by someone on the
    /// network between this process and the server: plain TCP, or TLS without a checked
    /// certificate, from another host.
    pub fn exposed(&self) -> bool {
        match &self.transport {
            Transport::Socket => false,
            Transport::Plain { loopback } => !loopback,
            Transport::Tls { loopback, .. } => {
                !loopback && !matches!(self.mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull)
            }
        }
    }
}

impl std::fmt::Display for DatabaseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = mode_name(self.mode);
        match &self.transport {
            Transport::Socket => write!(f, "over a Unix-domain socket (TLS does not apply)")?,
            Transport::Plain { .. } if matches!(self.mode, PgSslMode::Disable) => {
                write!(f, "not encrypted (sslmode=disable)")?
            }
            Transport::Plain { .. } => write!(
                f,
                "not encrypted: the server offers no TLS, and sslmode={mode} then goes without"
            )?,
            Transport::Tls { version, .. } => match self.mode {
                PgSslMode::VerifyFull => write!(
                    f,
                    "encrypted ({version}); the server's certificate and host name verified \
                     (sslmode=verify-full)"
                )?,
                PgSslMode::VerifyCa => write!(
                    f,
                    "encrypted ({version}); the server's certificate verified, not its host \
                     name (sslmode=verify-ca)"
                )?,
                _ => write!(
                    f,
                    "encrypted ({version}), the server's certificate unchecked (sslmode={mode})"
                )?,
            },
        }
        if self.exposed() {
            let who = match self.transport {
                Transport::Plain { .. } => "anyone on the network between them can read it",
                _ => "anyone on the network between them could stand in for the server",
            };
            write!(f, ": {who}; {VERIFY}")?;
        }
        Ok(())
    }
}

impl Store {
    /// Logs `what` with how the pool's sessions reach the server, and what to do when someone
    /// on the network could read them or stand in for the server. At info level: plain TCP
    /// on a private network (docker compose's) is an operator's choice, not a fault to repeat
    /// at every start.
    pub async fn log_connection(&self, what: &str) {
        match self.connection().await {
            Ok(c) => tracing::info!(connection = %c, "{what}"),
            Err(e) => tracing::info!(connection = %format!("unknown ({e})"), "{what}"),
        }
    }

    /// How a session of the pool reached the server (`pg_stat_ssl` of its own backend, which
    /// every role may read).
    pub async fn connection(&self) -> Result<DatabaseConnection, StoreError> {
        let (socket, loopback, ssl, version): (bool, bool, bool, Option<String>) = sqlx::query_as(
            "SELECT inet_client_addr() IS NULL,
                        coalesce(inet_client_addr() <<= inet '127.0.0.0/8'
                                 OR inet_client_addr() = inet '::1', false),
                        s.ssl, s.version
                   FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()",
        )
        .fetch_one(&self.pool)
        .await?;
        let transport = match (socket, ssl) {
            (true, _) => Transport::Socket,
            (false, true) => Transport::Tls {
                version: version.unwrap_or_else(|| "TLS".into()),
                loopback,
            },
            (false, false) => Transport::Plain { loopback },
        };
        Ok(DatabaseConnection {
            transport,
            mode: self.options().get_ssl_mode(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(transport: Transport, mode: PgSslMode) -> (String, bool) {
        let c = DatabaseConnection { transport, mode };
        (c.to_string(), c.exposed())
    }

    #[test]
    fn each_way_to_the_server_says_what_it_protects_and_what_to_do_when_not_enough() {
        let tls = |loopback| Transport::Tls {
            version: "TLSv1.3".into(),
            loopback,
        };
        assert_eq!(
            said(Transport::Socket, PgSslMode::Prefer),
            (
                "over a Unix-domain socket (TLS does not apply)".into(),
                false
            )
        );
        assert_eq!(
            said(tls(false), PgSslMode::VerifyFull),
            (
                "encrypted (TLSv1.3); the server's certificate and host name verified \
                 (sslmode=verify-full)"
                    .into(),
                false
            )
        );
        let (text, exposed) = said(tls(false), PgSslMode::VerifyCa);
        assert!(text.contains("not its host name") && !exposed, "{text}");
        let (text, exposed) = said(tls(false), PgSslMode::Prefer);
        assert!(exposed);
        assert!(
            text.starts_with(
                "encrypted (TLSv1.3), the server's certificate unchecked (sslmode=prefer): \
                 anyone on the network between them could stand in for the server; set \
                 sslmode=verify-full"
            ),
            "{text}"
        );
        // From the server's own host there is no network between them.
        assert_eq!(
            said(tls(true), PgSslMode::Require),
            (
                "encrypted (TLSv1.3), the server's certificate unchecked (sslmode=require)".into(),
                false
            )
        );
        let (text, exposed) = said(Transport::Plain { loopback: false }, PgSslMode::Prefer);
        assert!(exposed);
        assert!(
            text.starts_with(
                "not encrypted: the server offers no TLS, and sslmode=prefer then goes without: \
                 anyone on the network between them can read it"
            ),
            "{text}"
        );
        assert_eq!(
            said(Transport::Plain { loopback: true }, PgSslMode::Disable),
            ("not encrypted (sslmode=disable)".into(), false)
        );
    }
}
