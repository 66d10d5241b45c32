//! Which accounts an `accounts` command acts on, at fleet size: named by id (on the command line,
//! or one per line on stdin, as `accounts list --ids` prints them), or chosen by what `accounts
//! list` shows of them (tenant, state, health, a failed last run). Pure: the fleet's views in,
//! the chosen ids out; the commands read the fleet and act.

use std::collections::HashSet;

use clap::ValueEnum;
use uuid::Uuid;

use crate::service::status::AccountView;

/// An account's state as `accounts list` shows it (its first word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum State {
    Active,
    Paused,
    Retired,
    Excluded,
    Gated,
}

impl State {
    fn holds(self, state: &str) -> bool {
        let word = state.split(':').next().unwrap_or_default();
        word == self
            .to_possible_value()
            .expect("no variant is skipped")
            .get_name()
    }
}

/// An account's health (`sync_state.health`), or any health but `ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Health {
    Ok,
    NeedsReauth,
    Blocked,
    NotFound,
    Forbidden,
    /// Any health but `ok`.
    Unhealthy,
}

impl Health {
    fn holds(self, health: &str) -> bool {
        match self {
            Health::Unhealthy => health != "ok",
            h => {
                health
                    == h.to_possible_value()
                        .expect("no variant is skipped")
                        .get_name()
            }
        }
    }
}

/// What `accounts list` shows of an account, to choose accounts by. Several values of one
/// option: any of them; several options: all of them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Accounts of this tenant (Truto's `tenant_id`; repeat for several).
    #[arg(long, value_name = "TENANT")]
    pub tenant: Vec<String>,
    /// Accounts in this state (repeat for several).
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Vec<State>,
    /// Accounts of this health; `unhealthy` is any but `ok` (repeat for several).
    #[arg(long, value_enum, value_name = "HEALTH")]
    pub health: Vec<Health>,
    /// Accounts whose last run failed.
    #[arg(long)]
    pub failing: bool,
    /// Accounts whose last run needs attention (the delete guard kept users, Truto marked the
    /// listing partial).
    #[arg(long)]
    pub needs_attention: bool,
}

impl Filter {
    /// Whether any option is given.
    pub fn is_set(&self) -> bool {
        !self.tenant.is_empty()
            || !self.state.is_empty()
            || !self.health.is_empty()
            || self.failing
            || self.needs_attention
    }

    /// Whether `v` passes every option given.
    pub fn keeps(&self, v: &AccountView) -> bool {
        (self.tenant.is_empty()
            || v.tenant_id
                .as_deref()
                .is_some_and(|t| self.tenant.iter().any(|w| w == t)))
            && (self.state.is_empty() || self.state.iter().any(|s| s.holds(&v.state)))
            && (self.health.is_empty() || self.health.iter().any(|h| h.holds(&v.health)))
            && (!self.failing || v.last_outcome.as_deref() == Some("failed"))
            && (!self.needs_attention || v.last_outcome.as_deref() == Some("needs_attention"))
    }

    /// The fleet's views this filter keeps, in the fleet's order; a tenant no account of the
    /// fleet has is an error (a typo would otherwise select nothing and say so quietly).
    pub fn apply<'a>(&self, views: &'a [AccountView]) -> Result<Vec<&'a AccountView>, String> {
        let unknown: Vec<&str> = self
            .tenant
            .iter()
            .filter(|t| {
                !views
                    .iter()
                    .any(|v| v.tenant_id.as_deref() == Some(t.as_str()))
            })
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "no account of the fleet has tenant {}",
                unknown
                    .iter()
                    .map(|t| format!("{t:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(views.iter().filter(|v| self.keeps(v)).collect())
    }
}

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
        let mut seen = HashSet::new();
        let mut ids = Vec::new();
        for (where_, word) in words {
            let id = Uuid::parse_str(&word).map_err(|_| {
                format!(
                    "{where_}: {:?} is not an account id (a uuid)",
                    crate::text::shorten(&word, 60)
                )
            })?;
            if seen.insert(id) {
                ids.push(id);
            }
        }
        Ok(Chosen::Ids(ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: u128, tenant: &str, state: &str, health: &str, outcome: &str) -> AccountView {
        AccountView {
            integrated_account_id: Uuid::from_u128(n),
            tenant_id: Some(tenant.into()),
            source: "discovered".into(),
            state: state.into(),
            health: health.into(),
            last_outcome: Some(outcome.into()),
            ..AccountView::default()
        }
    }

    fn fleet() -> Vec<AccountView> {
        vec![
            view(1, "acme", "active", "ok", "succeeded"),
            view(2, "acme", "paused", "ok", "failed"),
            view(
                3,
                "globex",
                "gated: Truto status needs_reauth",
                "ok",
                "succeeded",
            ),
            view(4, "globex", "active", "needs_reauth", "failed"),
            view(
                5,
                "initech",
                "excluded: discovery.exclude_accounts",
                "blocked",
                "failed",
            ),
            view(6, "initech", "active", "ok", "needs_attention"),
        ]
    }

    fn ids(views: &[&AccountView]) -> Vec<u128> {
        views
            .iter()
            .map(|v| v.integrated_account_id.as_u128())
            .collect()
    }

    #[test]
    fn options_narrow_each_other_and_their_values_widen_each_one() {
        let fleet = fleet();
        let f = |filter: Filter| ids(&filter.apply(&fleet).unwrap());
        assert_eq!(
            f(Filter {
                tenant: vec!["acme".into()],
                ..Filter::default()
            }),
            [1, 2]
        );
        assert_eq!(
            f(Filter {
                tenant: vec!["acme".into(), "globex".into()],
                failing: true,
                ..Filter::default()
            }),
            [2, 4]
        );
        assert_eq!(
            f(Filter {
                state: vec![State::Gated, State::Excluded],
                ..Filter::default()
            }),
            [3, 5]
        );
        assert_eq!(
            f(Filter {
                health: vec![Health::Unhealthy],
                ..Filter::default()
            }),
            [4, 5]
        );
        assert_eq!(
            f(Filter {
                health: vec![Health::NeedsReauth],
                state: vec![State::Active],
                ..Filter::default()
            }),
            [4]
        );
        assert_eq!(
            f(Filter {
                needs_attention: true,
                ..Filter::default()
            }),
            [6]
        );
        assert_eq!(
            f(Filter {
                health: vec![Health::Ok],
                state: vec![State::Retired],
                ..Filter::default()
            }),
            Vec::<u128>::new()
        );
        let typo = Filter {
            tenant: vec!["acme".into(), "acne".into()],
            ..Filter::default()
        };
        assert_eq!(
            typo.apply(&fleet).unwrap_err(),
            "no account of the fleet has tenant \"acne\""
        );
    }

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
