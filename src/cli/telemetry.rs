//! Logging through `tracing`: pretty or JSON lines on stderr, level from `RUST_LOG` or config.
//! While progress bars are drawn, log lines are written around them, not through them.

use std::io::Write;
use std::sync::OnceLock;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

static BARS: OnceLock<indicatif::MultiProgress> = OnceLock::new();

/// The progress bars every log line must step around; created on first use.
pub fn bars() -> &'static indicatif::MultiProgress {
    BARS.get_or_init(|| {
        indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    })
}

#[derive(Clone, Copy)]
struct StderrAroundBars;

struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        let write = || {
            let _ = std::io::stderr().write_all(&line);
        };
        match BARS.get() {
            Some(mp) if !mp.is_hidden() => mp.suspend(write),
            _ => write(),
        }
    }
}

impl<'a> MakeWriter<'a> for StderrAroundBars {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(Vec::with_capacity(256))
    }
}

/// The exit code of a command whose output's reader went away: what a shell reports for a
/// process killed by SIGPIPE (128 + 13).
pub const EXIT_BROKEN_PIPE: i32 = 141;

/// Panics become one `error` event in the log (in its format, with the location), not loose
/// text on stderr. The message is what the panicking code wrote; nothing in lms-sync formats a
/// secret (tokens and database URLs are `SecretString`s whose Debug is redacted).
fn log_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            // A reader that stopped reading (`accounts list --ids | head`) closed the pipe, and
            // std's print macros panic on that: no bug. End as a command killed by SIGPIPE
            // would (the shell's 141), without a word, as `ls | head` does. (SIGPIPE itself
            // stays ignored: a socket closed under the service must be an error, not its end.)
            if message.starts_with("failed printing to stdout") && message.contains("(os error 32)")
            {
                std::process::exit(EXIT_BROKEN_PIPE);
            }
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(
                panic = %crate::text::shorten(&message, 500),
                %location,
                "internal error (a bug): please report it"
            );
        }));
    });
}

/// PostgreSQL's notices below a warning, which sqlx logs at INFO, are not shown by default.
const QUIET_NOTICES: &str = "sqlx::postgres::notice=warn";

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(settings: &LogSettings) {
    log_panics();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
        if settings.level.contains("sqlx") {
            return filter;
        }
        // PostgreSQL's notices come through sqlx at INFO: every command that migrates said
        // `schema "lms" already exists, skipping`, which reads like a problem and is none.
        // Its warnings still show; RUST_LOG or a `log.level` naming sqlx shows them all.
        filter.add_directive(QUIET_NOTICES.parse().expect("a valid directive"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(StderrAroundBars)
        .with_target(false);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_ansi(ansi).compact().try_init()
        }
    };
}
