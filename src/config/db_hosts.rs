//! `database.url` naming several hosts, as libpq takes it: `postgres://u@h1:5432,h2:5432/db`,
//! or `?host=/run/a,/run/b` (with `port=` one for all or one per host), most often with
//! `target_session_attrs=read-write`: a PostgreSQL cluster with a standby and no proxy or
//! virtual IP in front (Patroni, repmgr), where the primary is whichever host accepts writes.
//! sqlx connects to one host only, so the store connects to each host by a URL of its own
//! and uses the first that accepts writes (see `Store::choose_host`). Pure: this splits the
//! text. Nothing here quotes the URL: it may hold a password.

/// The values of `target_session_attrs` lms-sync takes: it writes the mirror, so whatever it
/// says it uses the first host that accepts writes (libpq's `any` would take the first that
/// answers, a standby included, where every write would fail).
const ATTRS: [&str; 3] = ["read-write", "primary", "any"];

/// One URL per host that `url` names, in its order, each without `target_session_attrs`
/// (sqlx does not know it). A URL naming one host without that parameter is returned as it
/// is. An error says what is wrong without quoting the URL.
pub fn split_hosts(url: &str) -> Result<Vec<String>, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    // (key, value), a value `None` for a key given without `=`.
    let mut params: Vec<(&str, Option<&str>)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        })
        .collect();
    let attrs: Vec<&str> = params
        .iter()
        .filter(|(k, _)| *k == "target_session_attrs")
        .map(|(_, v)| v.unwrap_or_default())
        .collect();
    if let Some(bad) = attrs.iter().find(|v| !ATTRS.contains(v)) {
        return Err(format!(
            "target_session_attrs={bad} is not one lms-sync can use: it writes the mirror, so it \
             takes read-write or primary (the first host that accepts writes; any is taken the \
             same way)"
        ));
    }
    params.retain(|(k, _)| *k != "target_session_attrs");
    let Some((scheme, rest)) = base.split_once("://") else {
        return Ok(vec![url.to_string()]);
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, hostspec) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let value = |key: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| *v)
    };
    let in_query = value("host").filter(|h| h.contains(','));
    if in_query.is_some() && hostspec.contains(',') {
        return Err("it names its hosts twice, in the address and in host=: name them once".into());
    }
    let ports: Vec<&str> = value("port")
        .map(|p| p.split(',').collect())
        .unwrap_or_default();
    let hosts: Vec<&str> = match in_query {
        Some(h) => h.split(',').collect(),
        None => hostspec.split(',').collect(),
    };
    if hosts.iter().any(|h| h.is_empty()) {
        return Err("its list of hosts has an empty entry".into());
    }
    if hosts.len() == 1 && ports.len() <= 1 && attrs.is_empty() {
        return Ok(vec![url.to_string()]);
    }
    if ports.len() > 1 && ports.len() != hosts.len() {
        return Err(format!(
            "it gives {} ports for {} hosts in port=: give one for all, or one per host",
            ports.len(),
            hosts.len()
        ));
    }
    Ok(hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(if ports.len() > 1 { i } else { 0 });
            let query: Vec<String> = params
                .iter()
                .map(|&(k, v)| match (k, v) {
                    ("host", _) if in_query.is_some() => format!("host={host}"),
                    ("port", _) => format!("port={}", port.copied().unwrap_or_default()),
                    (_, Some(v)) => format!("{k}={v}"),
                    (_, None) => k.to_string(),
                })
                .collect();
            let authority_host = if in_query.is_some() { hostspec } else { host };
            let mut one = format!("{scheme}://{userinfo}{authority_host}{path}");
            if !query.is_empty() {
                one.push('?');
                one.push_str(&query.join("&"));
            }
            one
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_naming_one_host_is_left_as_it_is() {
        for url in [
            "postgres://u:pw@db:5432/x",
            "postgres://u@localhost/x?host=/run/pg&sslmode=require",
            "postgresql://db/x",
        ] {
            assert_eq!(split_hosts(url).unwrap(), [url]);
        }
    }

    #[test]
    fn hosts_in_the_address_give_one_url_each_with_the_rest_kept() {
        assert_eq!(
            split_hosts(
                "postgres://u:p%40ss@db-1:5432,db-2:5433,[::1]/x?target_session_attrs=read-write&sslmode=require"
            )
            .unwrap(),
            [
                "postgres://u:p%40ss@db-1:5432/x?sslmode=require",
                "postgres://u:p%40ss@db-2:5433/x?sslmode=require",
                "postgres://u:p%40ss@[::1]/x?sslmode=require",
            ]
        );
    }

    #[test]
    fn hosts_in_the_query_give_one_url_each_with_their_ports() {
        assert_eq!(
            split_hosts("postgres://u@localhost/x?host=/run/a,/run/b&port=5432,5433").unwrap(),
            [
                "postgres://u@localhost/x?host=/run/a&port=5432",
                "postgres://u@localhost/x?host=/run/b&port=5433",
            ]
        );
        assert_eq!(
            split_hosts("postgres://u@localhost/x?host=/run/a,/run/b&port=6000").unwrap(),
            [
                "postgres://u@localhost/x?host=/run/a&port=6000",
                "postgres://u@localhost/x?host=/run/b&port=6000",
            ]
        );
        // One host with the parameter: the parameter is dropped, for sqlx.
        assert_eq!(
            split_hosts("postgres://db/x?target_session_attrs=primary").unwrap(),
            ["postgres://db/x"]
        );
    }

    #[test]
    fn what_cannot_be_used_is_refused_without_quoting_the_url() {
        for (url, said) in [
            (
                "postgres://u:SECRET@a,b/x?target_session_attrs=standby",
                "target_session_attrs=standby is not one lms-sync can use",
            ),
            (
                "postgres://u:SECRET@a,b/x?host=c,d",
                "names its hosts twice",
            ),
            ("postgres://u:SECRET@a,,b/x", "an empty entry"),
            (
                "postgres://u:SECRET@h/x?host=a,b,c&port=1,2",
                "gives 2 ports for 3 hosts",
            ),
        ] {
            let e = split_hosts(url).unwrap_err();
            assert!(e.contains(said) && !e.contains("SECRET"), "{url}: {e}");
        }
    }
}
