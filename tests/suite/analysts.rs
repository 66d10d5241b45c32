//! The mirror as analysts see it: every view shows every column it should, functions and views
//! work from any search_path, the history can be queried field by field, daily counts agree
//! with the point-in-time functions, bookkeeping tables stay bounded, and every SQL example in
//! the docs runs.

use std::collections::BTreeMap;

use crate::helpers::*;
use serde_json::json;
use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

/// The columns of a table or view in the mirror's schema, in order.
async fn columns(env: &Env, relation: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
          WHERE table_schema = 'lms' AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(relation)
    .fetch_all(env.store.pool())
    .await
    .unwrap()
}

/// A session as an analyst opens it: the database's default search_path, not the mirror's.
async fn analyst_session(env: &Env) -> PgConnection {
    let mut conn = PgConnection::connect(&env.db_url).await.unwrap();
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!path.contains("lms"), "{path}");
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_shows_every_column_it_should() {
    let a = account_id(1);
    let env = Env::new(&[(a, 20)]).await;
    assert!(env.sync(a).await.succeeded());

    let users = columns(&env, "users").await;
    assert!(users.contains(&"extra".to_string()) && users.contains(&"hydrated_at".to_string()));
    // live_users is users, row for row: the next column added to users must be added here too.
    assert_eq!(columns(&env, "live_users").await, users);
    // users_with_account: every column of users but the internal ones, plus the account's names.
    let internal = [
        "content_hash",
        "listed_hash",
        "hydrated_hash",
        "hydrated_at",
        "remote_data",
        "last_changed_run_id",
    ];
    let with_account = columns(&env, "users_with_account").await;
    for c in users.iter().filter(|c| !internal.contains(&c.as_str())) {
        assert!(with_account.contains(c), "users_with_account lacks {c}");
    }
    for c in ["account_label", "tenant_id"] {
        assert!(with_account.iter().any(|x| x == c), "{c}");
    }
    assert_eq!(
        columns(&env, "user_field_changes").await,
        [
            "integrated_account_id",
            "user_id",
            "change_id",
            "changed_at",
            "kind",
            "field",
            "old_value",
            "new_value"
        ]
    );
    // The feed is user_changes with its position first.
    let mut changes = columns(&env, "user_changes").await;
    changes.retain(|c| c != "xact_id");
    changes.insert(0, "xact_id".to_string());
    assert_eq!(columns(&env, "user_change_feed").await, changes);
    // Every view is one of these (a new one must be added here, with its own check).
    let views: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.views WHERE table_schema = 'lms' ORDER BY 1",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(
        views,
        [
            "account_freshness",
            "live_users",
            "user_change_feed",
            "user_field_changes",
            "user_primary_email",
            "user_snapshots",
            "users_with_account",
            "users_with_manager"
        ]
    );
    // Every column of every table and view is documented (by name) in docs/schema.md.
    let doc = include_str!("../../docs/schema.md");
    let all: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
          WHERE table_schema = 'lms' AND table_name NOT LIKE '\\_sqlx%' ORDER BY 1, ordinal_position",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert!(all.len() > 100, "{}", all.len());
    for (table, column) in &all {
        assert!(
            doc.contains(&format!("`{column}`")) || doc.contains(&format!("`{table}.{column}`")),
            "{table}.{column} is not documented in docs/schema.md"
        );
    }
    // The account registry knows the synced account, with its label.
    let (source, label): (String, Option<String>) =
        sqlx::query_as("SELECT source, label FROM accounts WHERE integrated_account_id = $1")
            .bind(a)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!((source.as_str(), label), ("config", None));
}

/// Analysts' queries, dashboards and loaders name columns and their types: the schema changes
/// only by adding. `tests/suite/schema_contract.txt` lists every column of every table and view
/// with its type, and every function's signature; a migration that drops, renames or retypes
/// one fails here, and one that adds must list what it adds (so the file stays the whole
/// schema).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_changes_only_by_adding() {
    let env = Env::new(&[]).await;
    let now: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
          WHERE c.relnamespace = 'lms'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p')
            AND a.attnum > 0 AND NOT a.attisdropped AND c.relname NOT LIKE '\\_sqlx%'
         UNION ALL
         SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)
                || ') ' || pg_get_function_result(p.oid)
           FROM pg_proc p WHERE p.pronamespace = 'lms'::regnamespace",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    let now: std::collections::BTreeSet<String> = now.into_iter().collect();
    let listed: std::collections::BTreeSet<String> = include_str!("schema_contract.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let gone: Vec<&String> = listed.difference(&now).collect();
    let new: Vec<&String> = now.difference(&listed).collect();
    assert!(
        gone.is_empty(),
        "taken away from the schema (dropped, renamed or retyped): {gone:#?}"
    );
    assert!(
        new.is_empty(),
        "added to the schema: list in tests/suite/schema_contract.txt: {new:#?}"
    );
    assert!(listed.len() > 300, "{}", listed.len());
}

/// What the catalog says of a table, view, column or function (`\d+` in psql, a BI tool's
/// column descriptions): NULL when nothing.
const CATALOG: &str = "
    SELECT c.relname::text, NULL::text, obj_description(c.oid, 'pg_class')
      FROM pg_class c
     WHERE c.relnamespace = 'lms'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p')
    UNION ALL
    SELECT c.relname::text, a.attname::text, col_description(c.oid, a.attnum)
      FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
     WHERE c.relnamespace = 'lms'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p')
       AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', NULL,
           obj_description(p.oid, 'pg_proc')
      FROM pg_proc p
     WHERE p.pronamespace = 'lms'::regnamespace
     ORDER BY 1, 2 NULLS FIRST";

/// An analyst meets a column in psql or a BI tool, not in docs/schema.md: the catalog says what
/// each means, and agrees with the document. A table, view, column or function added without a
/// comment fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_describes_every_table_view_column_and_function_as_the_document_does() {
    let env = Env::new(&[(account_id(1), 1)]).await;
    let mut conn = analyst_session(&env).await;
    let said: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as(CATALOG).fetch_all(&mut conn).await.unwrap();
    assert!(said.len() > 300, "{}", said.len());
    let missing: Vec<String> = said
        .iter()
        .filter(|(_, _, text)| text.as_deref().is_none_or(|t| t.trim().is_empty()))
        .map(|(rel, col, _)| match col {
            Some(col) => format!("{rel}.{col}"),
            None => rel.clone(),
        })
        .collect();
    assert!(missing.is_empty(), "without a comment: {missing:?}");
    // A view's column that is a users column says what users says of it.
    let (users_id, live_id): (String, String) = sqlx::query_as(
        "SELECT col_description('lms.users'::regclass, 2), col_description('lms.live_users'::regclass, 2)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(live_id, users_id);

    // Every table has its heading in docs/schema.md ("### `users` — one row per user ever
    // seen"), and its comment begins with what the heading says.
    let doc = include_str!("../../docs/schema.md");
    let headings: BTreeMap<String, String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .filter_map(|h| h.split_once(" — "))
        .flat_map(|(names, what)| {
            let what = what.replace('`', "");
            names
                .split(", ")
                .map(move |n| (n.trim_matches('`').to_string(), what.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, obj_description(c.oid, 'pg_class') FROM pg_class c
          WHERE c.relnamespace = 'lms'::regnamespace AND c.relkind = 'r'
            AND c.relname NOT LIKE '\\_sqlx%' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(tables.len() >= 19, "{tables:?}");
    for (table, comment) in &tables {
        let what = headings
            .get(table)
            .unwrap_or_else(|| panic!("docs/schema.md has no heading for the table {table}"));
        let mut want = what.clone();
        want[..1].make_ascii_uppercase();
        assert!(
            comment.starts_with(&want),
            "the comment on {table} does not begin as docs/schema.md's heading {what:?}: {comment:?}"
        );
    }
    // Every view and function is in the document too.
    for (name, _, _) in said.iter().filter(|(_, col, _)| col.is_none()) {
        let name = name.split('(').next().unwrap();
        assert!(
            name.starts_with("_sqlx") || doc.contains(&format!("`{name}")),
            "{name} is not in docs/schema.md"
        );
    }
}

/// `account_freshness`: one row per account of the registry, with how current its mirror is,
/// readable by an analyst's session without the service's bookkeeping.
/// A position in the change feed: (xact_id, change_id).
pub(crate) type Position = (i64, i64);

/// The loader's poll as docs/schema.md gives it, from position (0, 0).
fn feed_poll() -> String {
    sql_examples(include_str!("../../docs/schema.md"))
        .into_iter()
        .find(|q| q.contains("FROM lms.user_change_feed") && q.contains("> (0, 0)"))
        .expect("docs/schema.md has the loader's poll")
}

/// One poll of a loader that follows the feed as docs/schema.md says: its own query, from
/// `after`, every batch until the feed has nothing more.
pub(crate) async fn poll_feed(conn: &mut PgConnection, after: Position) -> Vec<Position> {
    let query = feed_poll();
    let (mut taken, mut at) = (Vec::new(), after);
    loop {
        let sql = query.replace("> (0, 0)", &format!("> ({}, {})", at.0, at.1));
        let rows: Vec<Position> = sqlx::query(&sql)
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("xact_id"), r.get("change_id")))
            .collect();
        let Some(last) = rows.last() else {
            return taken;
        };
        at = *last;
        taken.extend(rows);
    }
}

/// Polls the feed from `after` until it has given `n` changes. Every database of the cluster
/// shares it (the tests' too): a transaction another test holds open delays the feed.
async fn poll_feed_until(conn: &mut PgConnection, after: Position, n: usize) -> Vec<Position> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut taken: Vec<Position> = Vec::new();
    while taken.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the feed gave {} of {n} changes in 60 s",
            taken.len()
        );
        let from = taken.last().copied().unwrap_or(after);
        let more = poll_feed(conn, from).await;
        if more.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        taken.extend(more);
    }
    taken
}

/// What a loader must get from the feed: every change of the history, once, in the order of
/// the positions it remembered.
fn assert_taken_once_in_order(taken: &[Position], all: &[Position]) {
    assert!(
        taken.windows(2).all(|w| w[0] < w[1]),
        "positions go back: {taken:?}"
    );
    let mut got: Vec<i64> = taken.iter().map(|p| p.1).collect();
    got.sort_unstable();
    let mut want: Vec<i64> = all.iter().map(|p| p.1).collect();
    want.sort_unstable();
    assert_eq!(got, want, "the loader's changes against user_changes");
}

/// The late commit, through a loader reading from `loader` (the primary, or a standby of it):
/// a's 30 changes taken, then a change of a's taken in a transaction left open while b's
/// first sync commits its 30 after it. The loader gets nothing until the open one commits,
/// then it and b's, in order; a loader keyed on change_id never gets it. What it took.
async fn late_commit(env: &Env, (a, b): (Uuid, Uuid), loader: &mut PgConnection) -> Vec<Position> {
    assert!(env.sync(a).await.succeeded());
    let mut taken = poll_feed_until(&mut *loader, (0, 0), 30).await;
    assert_eq!(taken.len(), 30, "the first sync's inserts");
    assert!(taken.iter().all(|p| p.0 > 0), "{taken:?}");
    // A loader keyed on change_id alone, for comparison.
    let naive = |after: i64| {
        sqlx::query_scalar::<_, i64>(
            "SELECT change_id FROM lms.user_changes WHERE change_id > $1 ORDER BY change_id",
        )
        .bind(after)
    };
    let mut naive_taken: Vec<i64> = naive(0).fetch_all(&mut *loader).await.unwrap();

    // A page of a's next run has written its change and not committed yet (as the sync
    // writes it: the columns named, the position filled in by the default) ...
    let mut late = PgConnection::connect(&env.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut late).await.unwrap();
    let late_id: i64 = sqlx::query_scalar(
        "INSERT INTO lms.user_changes (integrated_account_id, user_id, run_id, kind, changed_fields)
         SELECT $1, '7', max(run_id), 'update', '{\"job_title\": {\"old\": \"a\", \"new\": \"b\"}}'
           FROM lms.sync_runs WHERE integrated_account_id = $1
         RETURNING change_id",
    )
    .bind(a)
    .fetch_one(&mut late)
    .await
    .unwrap();
    // ... while b's first sync commits its 30, after it.
    assert!(env.sync(b).await.succeeded());
    let b_first: i64 = env
        .scalar_i64(&format!(
            "SELECT min(change_id) FROM lms.user_changes WHERE integrated_account_id = '{b}'"
        ))
        .await;
    assert!(b_first > late_id, "{b_first} {late_id}");
    // (A standby shows them once it has replayed them.)
    let replayed = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM lms.user_changes WHERE integrated_account_id = $1",
        )
        .bind(b)
        .fetch_one(&mut *loader)
        .await
        .unwrap();
        if n == 30 {
            break;
        }
        assert!(
            std::time::Instant::now() < replayed,
            "b's changes not read back in 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The change_id loader takes b's and moves past the uncommitted change; the feed shows
    // nothing yet: b's transactions are younger than the open one.
    naive_taken.extend(
        naive(*naive_taken.last().unwrap())
            .fetch_all(&mut *loader)
            .await
            .unwrap(),
    );
    assert_eq!(naive_taken.len(), 60);
    assert_eq!(poll_feed(&mut *loader, *taken.last().unwrap()).await, []);

    sqlx::query("COMMIT").execute(&mut late).await.unwrap();
    let more = poll_feed_until(&mut *loader, *taken.last().unwrap(), 31).await;
    assert_eq!(more.len(), 31);
    assert_eq!(more[0].1, late_id, "the late change comes first: {more:?}");
    taken.extend(more);
    // The change_id loader never sees it.
    naive_taken.extend(
        naive(*naive_taken.last().unwrap())
            .fetch_all(&mut *loader)
            .await
            .unwrap(),
    );
    assert!(!naive_taken.contains(&late_id));
    taken
}

/// A loader that remembers how far it read must not lose a change committed after a later
/// one. `change_id` is taken when a change is written, so with accounts synced at once a
/// transaction holding change N can commit after the one holding N+1; a loader that
/// remembered N+1 skips N for good. The feed, followed by (xact_id, change_id) as documented,
/// shows neither until both have ended, and then both, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_following_the_change_feed_misses_no_change_committed_late() {
    let (a, b, c) = (account_id(1), account_id(2), account_id(3));
    let env = Env::new(&[(a, 30), (b, 30), (c, 250)]).await;
    let mut loader = analyst_session(&env).await;
    let taken = late_commit(&env, (a, b), &mut loader).await;

    // Real syncs of two accounts at once (c's 250 users over pages of 100, a's changes and
    // deletions), the loader polling all along and once more after both have ended.
    env.sim.update_user(a, "3", json!({"job_title": "Auditor"}));
    env.sim.delete_user(a, "4");
    let syncs = async {
        let (x, y) = tokio::join!(env.sync(a), env.sync(c));
        assert!(x.succeeded() && y.succeeded());
    };
    let polls = async {
        let mut taken = taken;
        // While the syncs write (the join polls both in turn) ...
        while taken.len() < 61 + 250 + 2 {
            let more = poll_feed(&mut loader, *taken.last().unwrap()).await;
            if more.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            taken.extend(more);
        }
        taken
    };
    let ((), taken) = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        tokio::join!(syncs, polls)
    })
    .await
    .expect("the feed gave every change of the two syncs within 120 s");
    let all: Vec<Position> =
        sqlx::query_as("SELECT xact_id, change_id FROM lms.user_changes ORDER BY 1, 2")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(all.len(), 30 + 1 + 30 + 250 + 2);
    assert_taken_once_in_order(&taken, &all);

    // A poll reads the index in the feed's order, from its position: no sort, which in a
    // large history would sort a whole transaction's rows (or all those from before the
    // feed, which share 0) at every poll. (The planner would scan a table this small.)
    sqlx::raw_sql("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .execute(&mut loader)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", feed_poll()))
        .fetch_all(&mut loader)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("user_changes_by_xact") && !plan.contains("Sort"),
        "{plan}"
    );
}

/// Analysts' loaders often read from a read replica. On a hot standby the feed holds the same
/// promise: the standby knows which of the primary's transactions are still open from the WAL
/// it replays, so the late change is not skipped there either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_misses_no_change_committed_late_on_a_hot_standby() {
    let (a, b) = (account_id(1), account_id(2));
    let (pg, url) = own_cluster().await;
    let env = Env::on(url, &[(a, 30), (b, 30)]).await;
    let pg = std::sync::Arc::new(pg);
    let standby_url = standby_of(&pg, "mirror").await;
    let mut replica = PgConnection::connect(&standby_url).await.unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut replica)
        .await
        .unwrap();
    assert!(in_recovery, "the loader reads from the standby");
    let taken = late_commit(&env, (a, b), &mut replica).await;
    let all: Vec<Position> =
        sqlx::query_as("SELECT xact_id, change_id FROM lms.user_changes ORDER BY 1, 2")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(all.len(), 61);
    assert_taken_once_in_order(&taken, &all);
}

/// A loader gets nothing newer while a writing transaction older than the latest changes stays
/// open: the service says for how long (`lms_sync_change_feed_held_back_seconds`, for the
/// alert), and 0 again once it ends. On a cluster of the test's own: every database of a
/// cluster shares the feed's bound, the other tests' too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_says_how_long_the_change_feed_is_held_back() {
    use crate::helpers::daemon::{config, spawn};
    let a = account_id(1);
    let (_pg, url) = own_cluster().await;
    let env = Env::on(url, &[(a, 50)]).await;
    let cfg = config(&env.sim, &[a], "1h", 1);
    let mut d = spawn(&cfg, &env.db_url);
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let ops = listening["fields"]["addr"].as_str().unwrap().to_string();
    let ev = d.wait_for("sync run finished").await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    // The accounts' state is read at most every 5 s: looked at until it shows.
    let held_back = |want: fn(f64) -> bool| {
        let url = format!("http://{ops}/metrics");
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let metrics = get_text(&url).await;
                if let Some(v) = gauge(&metrics, "lms_sync_change_feed_held_back_seconds") {
                    if want(v) {
                        return v;
                    }
                }
                assert!(std::time::Instant::now() < deadline, "{metrics}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(held_back(|v| v == 0.0).await, 0.0);

    // A session writes and stays open (here it only takes a transaction id, as a write does);
    // then a run commits a change.
    let mut open = PgConnection::connect(&env.db_url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT pg_current_xact_id()")
        .execute(&mut open)
        .await
        .unwrap();
    env.sim.update_user(a, "3", json!({"job_title": "Auditor"}));
    let ev = d.sync_now(&cfg, &env.db_url, a).await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    let waited = held_back(|v| v > 0.0).await;
    assert!(waited < 60.0, "{waited}");
    sqlx::query("COMMIT").execute(&mut open).await.unwrap();
    assert_eq!(held_back(|v| v == 0.0).await, 0.0);
    assert_eq!(d.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_freshness_says_how_current_each_accounts_mirror_is() {
    use lms_sync::devkit::simulator::Fault;
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 20), (b, 10)]).await;
    assert!(env.sync(a).await.succeeded());
    env.sim.push_fault(Some(b), Fault::status(400));
    assert!(!env.sync(b).await.succeeded());
    assert_eq!(
        columns(&env, "account_freshness").await,
        [
            "integrated_account_id",
            "label",
            "tenant_id",
            "integration",
            "paused",
            "retired_at",
            "health",
            "last_succeeded_at",
            "since_success",
            "last_outcome",
            "last_finished_at",
            "held_until",
            "live_users",
            "last_error"
        ]
    );
    let mut s = analyst_session(&env).await;
    type Row = (
        Uuid,
        String,
        Option<String>,
        Option<i64>,
        Option<bool>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT integrated_account_id, health, last_outcome, live_users,
                since_success < interval '1 minute', last_error
           FROM lms.account_freshness ORDER BY integrated_account_id",
    )
    .fetch_all(&mut s)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        rows[0],
        (
            a,
            "ok".into(),
            Some("succeeded".into()),
            Some(20),
            Some(true),
            None
        )
    );
    let (id, health, outcome, live, fresh, error) = &rows[1];
    assert_eq!(
        (id, health.as_str(), outcome.as_deref(), live, fresh),
        (&b, "ok", Some("failed"), &Some(0), &None),
        "never succeeded: no age"
    );
    assert!(error.as_deref().unwrap().contains("HTTP 400"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_and_views_work_from_any_search_path_and_history_reads_field_by_field() {
    let a = account_id(1);
    let env = Env::new(&[(a, 30)]).await;
    assert!(env.sync(a).await.succeeded());
    env.sim.update_user(
        a,
        "4",
        json!({"job_title": "Head of Learning", "status": "inactive"}),
    );
    assert!(env.sync(a).await.succeeded());
    let mut s = analyst_session(&env).await;

    let at: i64 = sqlx::query_scalar("SELECT count(*) FROM lms.users_at($1, now())")
        .bind(a)
        .fetch_one(&mut s)
        .await
        .unwrap();
    assert_eq!(at, 30);
    let state: serde_json::Value = sqlx::query_scalar("SELECT lms.user_state_at($1, '4', now())")
        .bind(a)
        .fetch_one(&mut s)
        .await
        .unwrap();
    assert_eq!(state["job_title"], "Head of Learning");
    let extra: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lms.live_users WHERE extra IS NULL OR extra->>'hire_date' IS NULL",
    )
    .fetch_one(&mut s)
    .await
    .unwrap();
    assert_eq!(extra, 30);
    let rows = sqlx::query(
        "SELECT field, old_value, new_value, kind FROM lms.user_field_changes
          WHERE integrated_account_id = $1 AND user_id = '4' ORDER BY field",
    )
    .bind(a)
    .fetch_all(&mut s)
    .await
    .unwrap();
    let fields: Vec<(String, serde_json::Value, String)> = rows
        .iter()
        .map(|r| (r.get("field"), r.get("new_value"), r.get("kind")))
        .collect();
    assert_eq!(
        fields,
        [
            (
                "job_title".to_string(),
                json!("Head of Learning"),
                "update".to_string()
            ),
            (
                "status".to_string(),
                json!("inactive"),
                "update".to_string()
            ),
        ]
    );
    let refreshed: i64 = sqlx::query_scalar("SELECT lms.refresh_daily_user_counts($1)")
        .bind(a)
        .fetch_one(&mut s)
        .await
        .unwrap();
    assert!(refreshed >= 1);
    // The queries the docs promise are served by indexes, not scans of the whole history.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'lms' AND tablename = 'user_changes' ORDER BY 1",
    )
    .fetch_all(&mut s)
    .await
    .unwrap();
    for i in ["user_changes_by_account_time", "user_changes_fields"] {
        assert!(indexes.iter().any(|x| x == i), "{i} in {indexes:?}");
    }
}

/// Live users per status of the account on `day` according to `users_at` at the day's end.
async fn counts_at_end_of(env: &Env, a: Uuid, day: chrono::NaiveDate) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (Option<String>, i64)>(
        "SELECT state->>'status', count(*) FROM users_at($1, ($2::date + 1)::timestamp AT TIME ZONE 'UTC')
          WHERE state->>'deleted_at' IS NULL GROUP BY 1",
    )
    .bind(a)
    .bind(day)
    .fetch_all(env.store.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|(s, n)| (s.unwrap_or_default(), n))
    .collect()
}

async fn daily_counts(env: &Env, a: Uuid, day: chrono::NaiveDate) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (Option<String>, i64)>(
        "SELECT status, users FROM daily_user_counts WHERE integrated_account_id = $1 AND day = $2",
    )
    .bind(a)
    .bind(day)
    .fetch_all(env.store.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|(s, n)| (s.unwrap_or_default(), n))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_counts_are_kept_by_each_run_and_agree_with_users_at_for_past_days() {
    let a = account_id(1);
    let env = Env::new(&[(a, 120)]).await;
    // Three runs with changes between them, then moved back to three, two and one days ago.
    assert!(env.sync(a).await.succeeded());
    for id in 1..=10 {
        env.sim
            .update_user(a, &id.to_string(), json!({"status": "inactive"}));
    }
    for id in 20..=25 {
        env.sim.delete_user(a, &id.to_string());
    }
    // A status only a deleted user ends up with: never a count of its own.
    env.sim.update_user(a, "30", json!({"status": "on_leave"}));
    env.sim.add_users(a, 5);
    assert!(env.sync(a).await.succeeded());
    env.sim.delete_user(a, "30");
    env.sim.restore_user(a, "20");
    for id in 1..=3 {
        env.sim
            .update_user(a, &id.to_string(), json!({"status": "suspended"}));
    }
    let last = env.sync(a).await;
    assert!(last.succeeded());
    let today = chrono::Utc::now().date_naive();
    // Each run keeps today's counts.
    let live: BTreeMap<String, i64> = sqlx::query_as::<_, (Option<String>, i64)>(
        "SELECT status, count(*) FROM live_users WHERE integrated_account_id = $1 GROUP BY 1",
    )
    .bind(a)
    .fetch_all(env.store.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|(s, n)| (s.unwrap_or_default(), n))
    .collect();
    assert_eq!(daily_counts(&env, a, today).await, live);

    let first_run = last.run_id.unwrap() - 2;
    for (run, days_ago) in [(first_run, 3), (first_run + 1, 2), (first_run + 2, 1)] {
        sqlx::query(
            "UPDATE users u SET first_seen_at = u.first_seen_at - make_interval(days => $2)
               FROM user_changes c
              WHERE c.run_id = $1 AND c.kind = 'insert'
                AND u.integrated_account_id = c.integrated_account_id AND u.id = c.user_id",
        )
        .bind(run)
        .bind(days_ago)
        .execute(env.store.pool())
        .await
        .unwrap();
        sqlx::query(
            "UPDATE user_changes SET changed_at = changed_at - make_interval(days => $2) WHERE run_id = $1",
        )
        .bind(run)
        .bind(days_ago)
        .execute(env.store.pool())
        .await
        .unwrap();
    }
    // The first refresh after an upgrade (no rows yet) fills every day from the history.
    sqlx::query("DELETE FROM daily_user_counts")
        .execute(env.store.pool())
        .await
        .unwrap();
    env.store.refresh_daily_counts(a).await.unwrap();

    let mut distinct = std::collections::BTreeSet::new();
    for days_ago in 1..=3 {
        let day = today - chrono::Duration::days(days_ago);
        let expected = counts_at_end_of(&env, a, day).await;
        assert!(!expected.is_empty(), "{day}");
        assert_eq!(daily_counts(&env, a, day).await, expected, "{day}");
        distinct.insert(format!("{expected:?}"));
    }
    assert_eq!(distinct.len(), 3, "the three days differ: {distinct:?}");
    assert_eq!(daily_counts(&env, a, today).await, live);
    let before: i64 = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM daily_user_counts WHERE integrated_account_id = '{a}' AND day < '{today}'"
        ))
        .await;
    // Later refreshes leave the days before the last recorded one as they are.
    env.store.refresh_daily_counts(a).await.unwrap();
    let after: i64 = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM daily_user_counts WHERE integrated_account_id = '{a}' AND day < '{today}'"
        ))
        .await;
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_runs_and_rejections_are_pruned_but_the_latest_run_stays() {
    let a = account_id(1);
    let mut env = Env::new(&[(a, 40)]).await;
    env.sim.set_raw_record(a, "5", r#"{"name":"no id at all"}"#);
    for _ in 0..3 {
        assert!(env.sync(a).await.succeeded());
    }
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM rejected_records")
            .await,
        1
    );
    // Everything is old now; the next run prunes all but itself (and a record refused again).
    sqlx::query("UPDATE sync_runs SET started_at = started_at - interval '200 days'")
        .execute(env.store.pool())
        .await
        .unwrap();
    sqlx::query(
        "UPDATE rejected_records SET last_rejected_at = last_rejected_at - interval '200 days'",
    )
    .execute(env.store.pool())
    .await
    .unwrap();
    env.sim.set_raw_record(
        a,
        "5",
        &json!(env.sim.expected_user(a, "6").map(|mut u| {
            u["id"] = json!("5");
            u
        }))
        .to_string(),
    );
    env.settings.history.sync_runs_retention_days = 30;
    env.settings.history.rejected_records_retention_days = 30;
    let o = env.sync(a).await;
    assert!(o.succeeded(), "{:?}", o.error);
    let runs: Vec<i64> = sqlx::query_scalar("SELECT run_id FROM sync_runs")
        .fetch_all(env.store.pool())
        .await
        .unwrap();
    assert_eq!(runs, [o.run_id.unwrap()]);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM rejected_records")
            .await,
        0
    );
    // Zero keeps them forever.
    env.settings.history.sync_runs_retention_days = 0;
    sqlx::query("UPDATE sync_runs SET started_at = started_at - interval '200 days'")
        .execute(env.store.pool())
        .await
        .unwrap();
    assert!(env.sync(a).await.succeeded());
    assert_eq!(env.scalar_i64("SELECT count(*) FROM sync_runs").await, 2);
}

/// The SQL examples of a Markdown text: fenced `sql` blocks (split into statements), and
/// inline code that is a whole query (SELECT … FROM …).
fn sql_examples(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = md;
    while let Some(start) = rest.find("```sql\n") {
        let body = &rest[start + 7..];
        let end = body.find("```").expect("a closed block");
        let block: String = body[..end]
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        out.extend(
            block
                .split(";\n")
                .map(|s| s.trim().trim_end_matches(';').to_string())
                .filter(|s| !s.is_empty()),
        );
        rest = &body[end + 3..];
    }
    let inline: Vec<&str> = md.split('`').collect();
    for (i, span) in inline.iter().enumerate() {
        if i % 2 == 1 && span.starts_with("SELECT ") && span.contains(" FROM") {
            out.push(span.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sql_example_in_the_docs_runs_in_an_analysts_session() {
    let a = account_id(1);
    let env = Env::new(&[(a, 60)]).await;
    assert!(env.sync(a).await.succeeded());
    env.sim.update_user(a, "42", json!({"status": "inactive"}));
    env.sim.delete_user(a, "7");
    assert!(env.sync(a).await.succeeded());
    let mut s = analyst_session(&env).await;
    // The payroll example joins a table of the analyst's own.
    for sql in [
        "CREATE SCHEMA payroll",
        "CREATE TABLE payroll.employees (employee_no text, email text)",
        "INSERT INTO payroll.employees SELECT 'E' || user_id, email FROM lms.user_primary_email LIMIT 5",
    ] {
        sqlx::query(sql).execute(&mut s).await.unwrap();
    }
    let mut ran = 0;
    for (doc, text) in [
        ("README.md", include_str!("../../README.md")),
        ("docs/schema.md", include_str!("../../docs/schema.md")),
        ("docs/runbook.md", include_str!("../../docs/runbook.md")),
    ] {
        for sql in sql_examples(text) {
            let sql = sql.replace('…', &a.to_string());
            sqlx::raw_sql(&sql)
                .execute(&mut s)
                .await
                .unwrap_or_else(|e| panic!("{doc}: {sql}\n{e}"));
            ran += 1;
        }
    }
    assert!(ran >= 15, "only {ran} examples found");
    // And the demo's own examples.
    for (title, sql) in lms_sync::devkit::demo::EXAMPLE_QUERIES {
        sqlx::raw_sql(sql)
            .execute(&mut s)
            .await
            .unwrap_or_else(|e| panic!("demo example {title}: {e}"));
    }
}
