//! The PostgreSQL store (feature `postgres`): idempotency records in the same database as the
//! business data, so that a result can commit in the same transaction as the writes that
//! produced it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use floodwall_idempotency::postgres::PostgresStore;
//! use floodwall_idempotency::{Fingerprint, Idempotency};
//!
//! let pool = sqlx::PgPool::connect("postgres://app@127.0.0.1/shop").await?;
//! let store = PostgresStore::new(pool);
//! store.migrate().await?; // creates or updates the table and its functions
//! let idem = Idempotency::new(store);
//! let outcome = idem
//!     .run_in_transaction("order-7", &Fingerprint::of(b"amount=42"), |tx| {
//!         Box::pin(async move {
//!             sqlx::query("INSERT INTO charges (order_id, amount) VALUES (7, 42)")
//!                 .execute(&mut *tx)
//!                 .await?;
//!             Ok::<_, sqlx::Error>("charged 42".to_string())
//!         })
//!     })
//!     .await?;
//! # let _ = outcome; Ok(()) }
//! ```
//!
//! # Schema
//!
//! [`PostgresStore::migrate`] (an explicit call; nothing runs behind the caller's back)
//! creates, in one transaction under an advisory lock, a table (default
//! `floodwall_idempotency`) with one row per key, an index on its expiry, a sequence for
//! fencing tokens and five PL/pgSQL functions — one per protocol step, so each step is one
//! round trip. Every statement is idempotent; later schema versions only add to it. The
//! table's columns are `key bytea` (the primary key; keys over 200 bytes are stored as their
//! SHA-256), `state "char"`, `token bigint`, `fingerprint bytea` (32 bytes),
//! `lease_until timestamptz`, `expires_at timestamptz`, `record bytea` and `phase text`.
//!
//! Size, measured (`tests/postgres.rs::the_table_grows_by_a_measured_size_per_million_keys`):
//! 100,000 completed keys of 24 bytes with 64-byte records take 57 MB with both indexes
//! after `VACUUM` (33 MB of it the table) — about 570 bytes per key, 570 MB per million. The
//! live rows and their index entries alone take 273 bytes per key (27 MB after
//! `VACUUM FULL`): each key is written twice (claim, then completion) and its expiry is
//! indexed, so an update is never HOT, and the rest is old row versions, space `VACUUM`
//! frees for new rows.
//! Rows leave once expired, deleted in batches by [`PostgresStore::sweep`] (or
//! [`PostgresStore::spawn_sweeper`]).
//!
//! # Concurrency
//!
//! Each step locks the key's row (`SELECT … FOR UPDATE` inside its function; a missing row
//! is inserted with `INSERT … ON CONFLICT DO NOTHING` and read again when another caller won
//! the insert), so claims of one key are serialized by PostgreSQL and claims of different keys
//! never wait for each other. Time is the database's `clock_timestamp()`, never the client's.
//! Tokens come from a sequence, so they grow across claims, releases, expiries and swept rows.
//! A completion inside a caller's transaction keeps the row locked until that transaction
//! ends: a duplicate that arrives meanwhile waits for it, then replays the committed result
//! (or claims the key if the transaction rolled back). The sweeper takes only rows nobody
//! holds (`FOR UPDATE SKIP LOCKED`) and at most one batch per statement, so it never holds
//! long locks.

mod tx;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::StoreError;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::record::{Abort, Begin, Fingerprint, Finish, Token};
use crate::store::{COMPLETION_GRACE, Store};

pub use tx::{PhaseError, Phases, TxFuture};

/// The table the store uses unless told otherwise.
pub const DEFAULT_TABLE: &str = "floodwall_idempotency";

/// The bound on each store call unless told otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Keys longer than this are stored as a marker byte and their SHA-256.
const MAX_KEY: usize = 200;

/// The longest lease or retention kept (100 years): `Duration::MAX` is capped here.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A [`Store`] on PostgreSQL through a [`sqlx::PgPool`]. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    table: String,
    call_timeout: Duration,
    sql: Statements,
}

/// The statements, built once for the table.
struct Statements {
    begin: String,
    complete: String,
    release: String,
    extend: String,
    reach: String,
    sweep: String,
    state_of: String,
    reached: String,
}

impl Statements {
    fn for_table(t: &str) -> Statements {
        Statements {
            begin: format!("SELECT o_kind, o_num, o_record FROM {t}_begin($1, $2, $3, $4)"),
            complete: format!("SELECT {t}_complete($1, $2, $3, $4)"),
            release: format!("SELECT {t}_release($1, $2, $3)"),
            extend: format!("SELECT {t}_extend($1, $2, $3, $4)"),
            reach: format!("SELECT {t}_reach($1, $2, $3, $4)"),
            sweep: format!(
                "WITH doomed AS (SELECT key FROM {t} WHERE expires_at < clock_timestamp() \
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 DELETE FROM {t} USING doomed WHERE {t}.key = doomed.key"
            ),
            state_of: format!("SELECT state, token FROM {t} WHERE key = $1"),
            reached: format!("SELECT phase FROM {t} WHERE key = $1 AND token = $2"),
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.inner.table)
            .field("call_timeout", &self.inner.call_timeout)
            .finish_non_exhaustive()
    }
}

/// Why a [`PostgresStore`] setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PostgresStore `{field}`: {reason}")]
pub struct PostgresConfigError {
    /// The setter whose value was rejected.
    pub field: &'static str,
    /// Why.
    pub reason: &'static str,
}

impl PostgresStore {
    /// A store on `pool`, table [`DEFAULT_TABLE`], each call bounded by
    /// [`DEFAULT_CALL_TIMEOUT`]. Call [`migrate`](Self::migrate) once before use.
    pub fn new(pool: PgPool) -> PostgresStore {
        Self::build(pool, DEFAULT_TABLE.to_owned(), DEFAULT_CALL_TIMEOUT)
    }

    /// The same store on another table: a lower-case SQL identifier (`[a-z_][a-z0-9_]*`, at
    /// most 40 bytes, so its index and functions' names fit PostgreSQL's 63).
    pub fn with_table(self, table: &str) -> Result<PostgresStore, PostgresConfigError> {
        let valid = !table.is_empty()
            && table.len() <= 40
            && table.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && table
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(PostgresConfigError {
                field: "table",
                reason: "must match [a-z_][a-z0-9_]* and be at most 40 bytes",
            });
        }
        Ok(Self::build(
            self.inner.pool.clone(),
            table.to_owned(),
            self.inner.call_timeout,
        ))
    }

    /// The same store with each call bounded by `timeout` (waiting for a pooled connection
    /// included): past it, the call answers [`StoreError::Timeout`] and the caller's failure
    /// policy applies. Zero is refused.
    pub fn with_call_timeout(
        self,
        timeout: Duration,
    ) -> Result<PostgresStore, PostgresConfigError> {
        if timeout.is_zero() {
            return Err(PostgresConfigError {
                field: "call_timeout",
                reason: "must be more than zero",
            });
        }
        Ok(Self::build(
            self.inner.pool.clone(),
            self.inner.table.clone(),
            timeout,
        ))
    }

    fn build(pool: PgPool, table: String, call_timeout: Duration) -> PostgresStore {
        let sql = Statements::for_table(&table);
        PostgresStore {
            inner: Arc::new(Inner {
                pool,
                table,
                call_timeout,
                sql,
            }),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The bound on each call.
    pub fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    /// Creates the table, its expiry index, the token sequence and the step functions, or
    /// brings them up to date: in one transaction, under a transaction-scoped advisory lock
    /// so that instances starting together do it one at a time. Safe to call at every start.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let ddl = include_str!("postgres/schema.sql").replace("__T__", &self.inner.table);
        let mut tx = self.inner.pool.begin().await.map_err(store_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(&self.inner.table)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::raw_sql(&ddl)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)
    }

    /// Deletes up to `batch` expired rows, oldest first, skipping rows another caller holds
    /// locked; returns how many it deleted. One short statement: call it again while it
    /// returns `batch`.
    pub async fn sweep(&self, batch: u32) -> Result<u64, StoreError> {
        let q = sqlx::query(&self.inner.sql.sweep).bind(i64::from(batch.max(1)));
        let done = self
            .bounded(q.execute(&self.inner.pool))
            .await?
            .rows_affected();
        Ok(done)
    }

    /// Sweeps every `every`: batch after batch of at most `batch` rows until fewer than
    /// `batch` were expired, then sleeps. Stops when the handle is dropped. Needs a Tokio
    /// runtime.
    pub fn spawn_sweeper(&self, every: Duration, batch: u32) -> Sweeper {
        let store = self.clone();
        let task = tokio::spawn(async move {
            loop {
                loop {
                    match store.sweep(batch).await {
                        Ok(n) if n >= u64::from(batch.max(1)) => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "idempotency sweep failed");
                            break;
                        }
                    }
                }
                tokio::time::sleep(every.max(Duration::from_millis(1))).await;
            }
        });
        Sweeper { task }
    }

    /// The key as stored: its bytes, or for a key over 200 bytes a marker byte (`0xFF`, never
    /// the first byte of UTF-8 text) and its SHA-256.
    pub(crate) fn stored_key(key: &str) -> Vec<u8> {
        if key.len() <= MAX_KEY {
            return key.as_bytes().to_vec();
        }
        let mut k = Vec::with_capacity(33);
        k.push(0xFF);
        k.extend_from_slice(&Sha256::digest(key.as_bytes()));
        k
    }

    /// Runs `call` within the call bound.
    pub(crate) async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.call_timeout, call).await {
            Ok(r) => r.map_err(store_error),
            Err(_) => Err(StoreError::Timeout {
                after: self.inner.call_timeout,
            }),
        }
    }

    /// One finishing function (`complete`, `release`, `extend`, `reach`) on `conn`.
    pub(crate) async fn finish_on<'c, E>(
        &self,
        conn: E,
        sql: Step,
        args: Args<'_>,
    ) -> Result<Finish, StoreError>
    where
        E: sqlx::PgExecutor<'c>,
    {
        let s = &self.inner.sql;
        let q = match sql {
            Step::Complete => s.complete.as_str(),
            Step::Release => s.release.as_str(),
            Step::Extend => s.extend.as_str(),
            Step::Reach => s.reach.as_str(),
        };
        let mut q = sqlx::query_scalar::<_, i32>(q)
            .bind(args.key)
            .bind(args.token.0 as i64);
        q = match args.extra {
            Extra::Record(record, retention) => q.bind(record).bind(micros(retention)),
            Extra::Grace => q.bind(micros(COMPLETION_GRACE)),
            Extra::Lease(lease) => q.bind(micros(lease)).bind(micros(COMPLETION_GRACE)),
            Extra::Point(point, retention) => q.bind(point).bind(micros(retention)),
        };
        let done = self.bounded(q.fetch_one(conn)).await?;
        Ok(if done == 1 {
            Finish::Done
        } else {
            Finish::Fenced
        })
    }

    /// Stores `record` as `key`'s result under `token` on `conn` — a transaction of the
    /// caller's own, for callers that manage their transactions themselves (with
    /// [`Store::begin`] for the claim): the result then commits or rolls back with that
    /// transaction. The key's row stays locked until it ends. [`Finish::Fenced`] means the
    /// claim was lost: roll back. ([`Idempotency::run_in_transaction`](crate::Idempotency)
    /// does all of this.)
    pub async fn complete_in(
        &self,
        conn: &mut sqlx::PgConnection,
        key: &str,
        token: Token,
        record: &[u8],
        retention: Duration,
    ) -> Result<Finish, StoreError> {
        let extra = Extra::Record(record, retention);
        self.step_on(conn, key, token, Step::Complete, extra).await
    }

    /// One finishing step on `conn` for the caller's `key` (stored as
    /// [`stored_key`](Self::stored_key)).
    async fn step_on<'c, E>(
        &self,
        conn: E,
        key: &str,
        token: Token,
        step: Step,
        extra: Extra<'_>,
    ) -> Result<Finish, StoreError>
    where
        E: sqlx::PgExecutor<'c>,
    {
        let key = Self::stored_key(key);
        let args = Args {
            key: &key,
            token,
            extra,
        };
        self.finish_on(conn, step, args).await
    }

    /// Whether the row of `key` is completed by `token` (after a commit whose reply was lost).
    pub(crate) async fn completed_by(&self, key: &[u8], token: Token) -> Result<bool, StoreError> {
        let row: Option<(i8, i64)> = self
            .bounded(
                sqlx::query_as(&self.inner.sql.state_of)
                    .bind(key)
                    .fetch_optional(&self.inner.pool),
            )
            .await?;
        Ok(row == Some((b'c' as i8, token.0 as i64)))
    }

    /// The recovery point `token`'s run of `key` starts from (carried over from an earlier
    /// attempt of the same request).
    pub(crate) async fn reached(
        &self,
        key: &[u8],
        token: Token,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = self
            .bounded(
                sqlx::query_as(&self.inner.sql.reached)
                    .bind(key)
                    .bind(token.0 as i64)
                    .fetch_optional(&self.inner.pool),
            )
            .await?;
        Ok(row.and_then(|(phase,)| phase))
    }

    async fn claim(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        let (kind, num, record): (i8, i64, Option<Vec<u8>>) = self
            .bounded(
                sqlx::query_as(&self.inner.sql.begin)
                    .bind(Self::stored_key(key))
                    .bind(fingerprint.as_bytes().as_slice())
                    .bind(micros(lease))
                    .bind(micros(COMPLETION_GRACE))
                    .fetch_one(&self.inner.pool),
            )
            .await?;
        Ok(match kind as u8 {
            b'n' => Begin::Claimed(Token(u64::try_from(num).map_err(|_| bad_reply(num))?)),
            b'c' => Begin::Completed(record.ok_or_else(|| bad_reply(num))?),
            b'i' => Begin::InProgress {
                retry_after: Duration::from_micros(u64::try_from(num).unwrap_or(0)),
            },
            b'm' => Begin::Mismatch,
            other => {
                return Err(StoreError::Protocol(format!(
                    "begin answered kind {other} (expected n, c, i or m)"
                )));
            }
        })
    }
}

/// A finishing step.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    Complete,
    Release,
    Extend,
    Reach,
}

/// A finishing step's arguments.
#[derive(Debug)]
pub(crate) struct Args<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) token: Token,
    pub(crate) extra: Extra<'a>,
}

#[derive(Debug)]
pub(crate) enum Extra<'a> {
    Record(&'a [u8], Duration),
    Grace,
    Lease(Duration),
    Point(&'a str, Duration),
}

fn bad_reply(num: i64) -> StoreError {
    StoreError::Protocol(format!("begin answered an unexpected row (number {num})"))
}

/// A duration in whole microseconds, at least 1, capped at 100 years.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.min(MAX_TTL).as_micros())
        .unwrap_or(i64::MAX)
        .max(1)
}

/// A sqlx error as a store error: the server or the pool unreachable is
/// [`StoreError::Unavailable`] (transient); a database error is [`StoreError::Script`].
pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) => {
            // Class 08 (connection), 57P (shutdown, crash), 53 (resources), 40 (rollback:
            // serialization failure, deadlock): the same call may succeed later.
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if ["08", "57", "53", "40"].iter().any(|c| code.starts_with(c)) {
                StoreError::Unavailable {
                    message: format!("PostgreSQL cannot serve now ({code}): {db}"),
                    source: Some(Box::new(sqlx::Error::Database(db))),
                }
            } else {
                StoreError::Script(format!("PostgreSQL error {code}: {db}"))
            }
        }
        sqlx::Error::Configuration(e) => StoreError::Config(e.to_string()),
        sqlx::Error::Decode(e) | sqlx::Error::ColumnDecode { source: e, .. } => {
            StoreError::Protocol(e.to_string())
        }
        sqlx::Error::RowNotFound | sqlx::Error::TypeNotFound { .. } => {
            StoreError::Protocol(e.to_string())
        }
        other => StoreError::Unavailable {
            message: format!("PostgreSQL unavailable: {other}"),
            source: Some(Box::new(other)),
        },
    }
}

/// The background sweeper of [`PostgresStore::spawn_sweeper`]; stops when dropped.
#[derive(Debug)]
pub struct Sweeper {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Store for PostgresStore {
    fn begin(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Begin, StoreError>> + Send {
        self.claim(key, fingerprint, lease)
    }

    fn complete(
        &self,
        key: &str,
        token: Token,
        record: &[u8],
        retention: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        let extra = Extra::Record(record, retention);
        self.step_on(&self.inner.pool, key, token, Step::Complete, extra)
    }

    fn abort(
        &self,
        key: &str,
        token: Token,
        how: Abort<'_>,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        let (step, extra) = match how {
            Abort::Release => (Step::Release, Extra::Grace),
            Abort::Record { record, retention } => {
                (Step::Complete, Extra::Record(record, retention))
            }
        };
        self.step_on(&self.inner.pool, key, token, step, extra)
    }

    fn extend(
        &self,
        key: &str,
        token: Token,
        lease: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        let extra = Extra::Lease(lease);
        self.step_on(&self.inner.pool, key, token, Step::Extend, extra)
    }
}
