//! What the PostgreSQL tests share: an instance (a pool of its own and the store on it,
//! migrated) on a server the test started, and the business table they write to.
#![allow(dead_code)] // each test file uses some of these

use std::time::Duration;

use floodwall_idempotency::postgres::PostgresStore;
use floodwall_testkit::PostgresServer;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// A pool of its own (an instance) on `server`, and the store on it, migrated.
pub(crate) async fn instance(server: &PostgresServer, connections: u32) -> PostgresStore {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&server.url())
        .await
        .unwrap();
    let store = PostgresStore::new(pool);
    store.migrate().await.unwrap();
    store
}

/// The business table the transactional tests write to.
pub(crate) async fn charges_table(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS charges (id bigserial PRIMARY KEY, order_key text NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
}

pub(crate) async fn charges_of(pool: &PgPool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM charges WHERE order_key = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
}
