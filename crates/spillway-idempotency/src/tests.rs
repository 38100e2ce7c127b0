//! One set of checks, run against both stores (the PostgreSQL one against
//! the test server of `deploy/local/services.sh up`). Time is what the
//! test passes: a window or a lease ends when the test says so.

use std::{sync::Arc, time::Duration};

use crate::{local::LocalStore, postgres::PostgresStore, Claim, Remembered, Store};

const LEASE: Duration = Duration::from_secs(60);
const T0: i64 = 1_800_000_000_000;

fn answer(id: &str) -> Remembered {
    Remembered { status: 202, message_id: id.to_owned(), spooled: false }
}

async fn the_rules_hold(store: Arc<dyn Store>, scope: &str) {
    let (a, b) = ([1u8; 32], [2u8; 32]);
    assert_eq!(store.claim(scope, "k1", &a, T0, LEASE).await.expect("claim"), Claim::New);
    match store.claim(scope, "k1", &a, T0 + 10, LEASE).await.expect("claim") {
        Claim::InFlight { retry_after } => assert!(retry_after >= Duration::from_secs(59), "{retry_after:?}"),
        other => panic!("a repeat while the first is stored: {other:?}"),
    }
    assert_eq!(store.claim(scope, "k1", &b, T0 + 10, LEASE).await.expect("claim"), Claim::Mismatch);
    let window_end = T0 + 24 * 3_600_000;
    store.complete(scope, "k1", &answer("01ID"), window_end).await.expect("complete");
    assert_eq!(
        store.claim(scope, "k1", &a, T0 + 20, LEASE).await.expect("claim"),
        Claim::Done(answer("01ID"))
    );
    assert_eq!(store.claim(scope, "k1", &b, T0 + 20, LEASE).await.expect("claim"), Claim::Mismatch);
    assert_eq!(
        store.claim(scope, "k1", &a, window_end - 1, LEASE).await.expect("claim"),
        Claim::Done(answer("01ID")),
        "still remembered just before the window ends"
    );
    assert_eq!(
        store.claim(scope, "k1", &b, window_end, LEASE).await.expect("claim"),
        Claim::New,
        "a key is free again once its window ended, for any request"
    );
    // Released (storing failed): the retry claims it at once.
    assert_eq!(store.claim(scope, "k2", &a, T0, LEASE).await.expect("claim"), Claim::New);
    store.release(scope, "k2").await.expect("release");
    assert_eq!(store.claim(scope, "k2", &a, T0 + 1, LEASE).await.expect("claim"), Claim::New);
    // Never completed (its process died): free once the lease ends.
    assert!(matches!(
        store.claim(scope, "k2", &a, T0 + 59_000, LEASE).await.expect("claim"),
        Claim::InFlight { .. }
    ));
    assert_eq!(store.claim(scope, "k2", &a, T0 + 1 + 60_000, LEASE).await.expect("claim"), Claim::New);
    // A completed key is not released by a late release.
    store.complete(scope, "k2", &answer("02ID"), window_end).await.expect("complete");
    store.release(scope, "k2").await.expect("release");
    assert_eq!(
        store.claim(scope, "k2", &a, T0 + 70_000, LEASE).await.expect("claim"),
        Claim::Done(answer("02ID"))
    );
    // Another scope (route) is another key space.
    assert_eq!(store.claim(&format!("{scope}-other"), "k2", &b, T0, LEASE).await.expect("claim"), Claim::New);
    // The sweep deletes what ended, and only that.
    let swept = store.sweep(window_end + 1).await.expect("sweep");
    assert!(swept >= 2, "swept {swept}");
    assert_eq!(store.claim(scope, "k2", &b, window_end + 2, LEASE).await.expect("claim"), Claim::New);
}

async fn one_of_many_concurrent_claims_wins(store: Arc<dyn Store>, scope: &str) {
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (store, scope) = (store.clone(), scope.to_owned());
        tasks.push(tokio::spawn(async move { store.claim(&scope, "race", &[7u8; 32], T0, LEASE).await }));
    }
    let mut new = 0;
    for t in tasks {
        match t.await.expect("task").expect("claim") {
            Claim::New => new += 1,
            Claim::InFlight { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(new, 1, "exactly one concurrent claim may store");
}

fn local() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path()).expect("open");
    (dir, Arc::new(store))
}

async fn postgres(table: &str) -> Arc<dyn Store> {
    let url = std::env::var("SPILLWAY_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let store = PostgresStore::connect(&url, table)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e} (start the test servers with `deploy/local/services.sh up`)"));
    Arc::new(store)
}

fn scope(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), T0)
}

#[tokio::test]
async fn local_store_keeps_the_rules() {
    let (_dir, store) = local();
    the_rules_hold(store, &scope("rules")).await;
}

#[tokio::test]
async fn local_store_lets_one_concurrent_claim_win() {
    let (_dir, store) = local();
    one_of_many_concurrent_claims_wins(store, &scope("race")).await;
}

#[tokio::test]
async fn local_store_remembers_across_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = LocalStore::open(dir.path()).expect("open");
        assert_eq!(s.claim("r", "k", &[1; 32], T0, LEASE).await.expect("claim"), Claim::New);
        s.complete("r", "k", &answer("01ID"), T0 + 1_000_000).await.expect("complete");
    }
    let s = LocalStore::open(dir.path()).expect("open again");
    assert_eq!(s.claim("r", "k", &[1; 32], T0 + 5, LEASE).await.expect("claim"), Claim::Done(answer("01ID")));
}

#[tokio::test]
async fn postgres_store_keeps_the_rules() {
    // A table per test: this one's sweep must not delete the other's keys.
    let store = postgres("spillway_idempotency_rules_test").await;
    the_rules_hold(store, &scope("rules")).await;
}

#[tokio::test]
async fn postgres_store_lets_one_concurrent_claim_win() {
    let store = postgres("spillway_idempotency_race_test").await;
    one_of_many_concurrent_claims_wins(store, &scope("race")).await;
}
