//! Which accounts an action chooses by what the fleet shows of them (`accounts list`'s tenant,
//! state, health, a failed last run), for the `accounts` commands (`cli/select.rs`, which adds
//! ids and `--all`) and the admin routes alike: one meaning of `--state paused` and
//! `"state": ["paused"]`. Pure: the fleet's views in, those chosen out. (It derives clap's
//! parsing so that the command line's options are these fields, documented once.)

use clap::ValueEnum;

use super::status::AccountView;

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
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct Filter {
    /// Accounts of this tenant (Truto's `tenant_id`; repeat, or separate by commas, for several).
    #[arg(long, value_name = "TENANT", value_delimiter = ',')]
    pub tenant: Vec<String>,
    /// Accounts in this state (repeat, or separate by commas, for several).
    #[arg(long, value_enum, value_name = "STATE", value_delimiter = ',')]
    pub state: Vec<State>,
    /// Accounts of this health; `unhealthy` is any but `ok` (repeat, or separate by commas, for
    /// several).
    #[arg(long, value_enum, value_name = "HEALTH", value_delimiter = ',')]
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

/// Account ids as an operator gives them, each with where it was given (`argument 2`, `stdin
/// line 3`, `ids[0]`): in the order given, without repeats; a word that is not a uuid is an
/// error naming where it was.
pub fn account_ids<'a>(
    words: impl IntoIterator<Item = (String, &'a str)>,
) -> Result<Vec<uuid::Uuid>, String> {
    let mut seen = std::collections::HashSet::new();
    let mut ids = Vec::new();
    for (given_at, word) in words {
        let id = uuid::Uuid::parse_str(word).map_err(|_| {
            format!(
                "{given_at}: {:?} is not an account id (a uuid)",
                crate::text::shorten(word, 60)
            )
        })?;
        if seen.insert(id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

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
}
