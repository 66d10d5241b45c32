//! Which accounts an `accounts` command acts on, at fleet size: named by id (on the command line,
//! or one per line on stdin, as `accounts list --ids` prints them), or chosen by what `accounts
//! list` shows of them (tenant, state, health, a failed last run: [`Filter`], shared with the
//! admin routes). Pure: the fleet's views in, the chosen ids out; the commands read the fleet and
//! act.

use uuid::Uuid;

pub use crate::service::choose::Filter;

/// The accounts a steering command (`pause`, `resume`, `sync-now`, `reset-cursor`, `protect`,
/// `unprotect`) acts on: ids, or `-` and ids on stdin, or a [`Filter`], or `--all`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Select {
    /// The accounts (integrated account ids); `-` reads them from stdin, one per line (as
    /// `accounts list --ids` prints them; blank lines and `#` comments are skipped).
    #[arg(value_name = "UUID")]
    pub accounts: Vec<String>,
    #[command(flatten)]
    pub filter: Filter,
    /// Every account of the fleet.
    #[arg(long)]
    pub all: bool,
    /// Print the accounts it would act on, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// How a [`Select`] names its accounts.
#[derive(Debug, PartialEq, Eq)]
pub enum Chosen {
    /// By id (the command line or stdin), in the order given, without repeats: every one must
    /// be in the registry.
    Ids(Vec<Uuid>),
    /// By what the fleet shows of them.
    Filter,
    /// Every account of the fleet.
    All,
}

impl Select {
    /// How the accounts are named; `stdin` is read only for `-`. A usage error says what is
    /// wrong: nothing named, ids and options together, an id that is not a uuid.
    pub fn chosen(
        &self,
        stdin: impl FnOnce() -> std::io::Result<String>,
    ) -> Result<Chosen, String> {
        let by_filter = self.filter.is_set();
        match (self.accounts.is_empty(), by_filter, self.all) {
            (true, false, false) => {
                return Err(
                    "name the accounts: their ids, `-` to read them from stdin, or \
                            choose them with --tenant, --state, --health, --failing or \
                            --needs-attention (--all for every account)"
                        .into(),
                )
            }
            (false, true, _) | (false, _, true) => return Err(
                "give account ids or options that choose accounts (--tenant, --all, …), not both"
                    .into(),
            ),
            (true, true, true) => {
                return Err("--all selects every account: drop it, or the other options".into())
            }
            (true, true, false) => return Ok(Chosen::Filter),
            (true, false, true) => return Ok(Chosen::All),
            (false, false, false) => {}
        }
        let mut words: Vec<(String, String)> = Vec::new();
        if self.accounts.iter().any(|a| a == "-") {
            if self.accounts.len() > 1 {
                return Err("`-` reads the ids from stdin: give no other id with it".into());
            }
            let text = stdin().map_err(|e| format!("cannot read the ids from stdin: {e}"))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or_default().trim();
                if !line.is_empty() {
                    words.push((format!("stdin line {}", i + 1), line.to_string()));
                }
            }
        } else {
            for (n, a) in self.accounts.iter().enumerate() {
                words.push((format!("argument {}", n + 1), a.clone()));
            }
        }
        let ids = crate::service::choose::account_ids(
            words
                .iter()
                .map(|(given_at, word)| (given_at.clone(), word.as_str())),
        )?;
        Ok(Chosen::Ids(ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::choose::State;

    #[test]
    fn ids_come_from_the_arguments_or_stdin_and_never_with_options() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let no_stdin = || -> std::io::Result<String> { panic!("stdin read") };
        let args = |accounts: &[&str]| Select {
            accounts: accounts.iter().map(|s| s.to_string()).collect(),
            ..Select::default()
        };
        assert_eq!(
            args(&[&a.to_string(), &b.to_string(), &a.to_string()]).chosen(no_stdin),
            Ok(Chosen::Ids(vec![a, b]))
        );
        let piped = format!("# paused for the migration\n{b}\n\n  {a}  # the other\n{b}\n");
        assert_eq!(
            args(&["-"]).chosen(|| Ok(piped)),
            Ok(Chosen::Ids(vec![b, a]))
        );
        assert_eq!(
            args(&["-"]).chosen(|| Ok(String::new())),
            Ok(Chosen::Ids(vec![]))
        );
        assert_eq!(
            args(&["-"])
                .chosen(|| Ok(format!("{a}\nacme\n")))
                .unwrap_err(),
            "stdin line 2: \"acme\" is not an account id (a uuid)"
        );
        assert_eq!(
            args(&[&a.to_string(), "x"]).chosen(no_stdin).unwrap_err(),
            "argument 2: \"x\" is not an account id (a uuid)"
        );
        assert!(args(&["-", &a.to_string()])
            .chosen(no_stdin)
            .unwrap_err()
            .contains("give no other id"));
        assert!(Select::default()
            .chosen(no_stdin)
            .unwrap_err()
            .starts_with("name the accounts"));
        let mut both = args(&[&a.to_string()]);
        both.filter.failing = true;
        assert!(both.chosen(no_stdin).unwrap_err().contains("not both"));
        let mut all = Select {
            all: true,
            ..Select::default()
        };
        assert_eq!(all.chosen(no_stdin), Ok(Chosen::All));
        all.filter.state = vec![State::Paused];
        assert!(all
            .chosen(no_stdin)
            .unwrap_err()
            .starts_with("--all selects"));
        all.all = false;
        assert_eq!(all.chosen(no_stdin), Ok(Chosen::Filter));
    }
}
