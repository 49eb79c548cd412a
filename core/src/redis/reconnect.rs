//! A multiplexed connection to one server that reconnects by itself.
//!
//! Every call clones the current redis-rs `MultiplexedConnection` (all calls share its one
//! socket) and sends on it directly. When the connection is lost — an I/O error on a call, or,
//! with RESP3, the disconnection notice the connection pushes even while idle — one background
//! task drops it and reconnects, retrying every 10 ms to 500 ms (doubling), each attempt
//! bounded by the connect timeout. Calls made meanwhile wait for the attempt under way (within
//! their own bound): they go out on the new connection when it succeeds, and fail when it
//! fails, so the store path's bound and health gate decide what callers see.

use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;

use ::redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use ::redis::{AsyncConnectionConfig, Client, Cmd, PushInfo, PushKind, RedisError, Value};

/// The shared handle; clones share the connection.
#[derive(Clone)]
pub(super) struct Reconnecting {
    state: Arc<State>,
}

struct State {
    client: Client,
    connect_timeout: Duration,
    current: RwLock<Option<MultiplexedConnection>>,
    reconnecting: AtomicBool,
    /// The last reconnect attempt failed (the server refused or did not answer).
    down: AtomicBool,
    /// Woken after every reconnect attempt, successful or not.
    attempted: Notify,
    me: Weak<State>,
}

/// Turns the connection's disconnection notice into a reconnect.
struct DisconnectWatch(Weak<State>);

impl AsyncPushSender for DisconnectWatch {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if info.kind == PushKind::Disconnection
            && let Some(state) = self.0.upgrade()
        {
            state.reconnect();
        }
        Ok(())
    }
}

impl Reconnecting {
    /// Connects to `client`'s server, each attempt bounded by `connect_timeout`.
    pub(super) async fn connect(
        client: Client,
        connect_timeout: Duration,
    ) -> Result<Reconnecting, RedisError> {
        let handle = Self::lazy(client, connect_timeout);
        let conn = handle.state.open().await?;
        *handle.state.current.write().expect("not poisoned") = Some(conn);
        Ok(handle)
    }

    /// A handle that connects on its first call (a Cluster node learnt from the slot table):
    /// that call waits for the attempt, within its own bound.
    pub(super) fn lazy(client: Client, connect_timeout: Duration) -> Reconnecting {
        let state = Arc::new_cyclic(|me| State {
            client,
            connect_timeout,
            current: RwLock::new(None),
            reconnecting: AtomicBool::new(false),
            down: AtomicBool::new(false),
            attempted: Notify::new(),
            me: me.clone(),
        });
        Reconnecting { state }
    }

    /// Sends `cmd` on the current connection; an I/O failure starts a reconnect.
    pub(super) async fn send(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        let mut conn = self.current().await?;
        let result = conn.send_packed_command(cmd).await;
        self.after(result)
    }

    /// Sends `ASKING` and `cmd` back to back on the current connection and answers `cmd`'s
    /// reply: a Cluster slot being migrated serves the key here for this one command.
    pub(super) async fn send_asking(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        let mut conn = self.current().await?;
        let mut pipe = ::redis::pipe();
        pipe.cmd("ASKING").add_command(cmd.clone());
        let result = conn
            .send_packed_commands(&pipe, 1, 1)
            .await
            .map(|mut replies| replies.pop().unwrap_or(Value::Nil));
        self.after(result)
    }

    /// Whether the connection is lost and the last attempt to re-establish it failed (a call
    /// now would wait for the next attempt). A handle not connected yet is not down.
    pub(super) fn is_down(&self) -> bool {
        self.state.down.load(Ordering::Acquire)
    }

    async fn current(&self) -> Result<MultiplexedConnection, RedisError> {
        let current = self.state.current.read().expect("not poisoned").clone();
        match current {
            Some(conn) => Ok(conn),
            None => self.state.wait_for_attempt().await,
        }
    }

    fn after(&self, result: Result<Value, RedisError>) -> Result<Value, RedisError> {
        if let Err(e) = &result
            && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal())
        {
            self.state.reconnect();
        }
        result
    }
}

impl State {
    /// No connection now: waits for the reconnect attempt under way (starting one if none
    /// is) and takes its connection, or fails with the attempt.
    async fn wait_for_attempt(&self) -> Result<MultiplexedConnection, RedisError> {
        let attempt = self.attempted.notified();
        tokio::pin!(attempt);
        attempt.as_mut().enable();
        if let Some(conn) = self.current.read().expect("not poisoned").clone() {
            return Ok(conn);
        }
        self.reconnect();
        attempt.await;
        self.current
            .read()
            .expect("not poisoned")
            .clone()
            .ok_or_else(|| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the connection to Redis is lost and reconnecting failed",
                ))
            })
    }

    async fn open(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_push_sender(DisconnectWatch(self.me.clone()));
        match tokio::time::timeout(
            self.connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            ))),
        }
    }

    /// Starts the one reconnect task, unless it runs already.
    fn reconnect(&self) {
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reconnecting.store(false, Ordering::Release);
            return;
        };
        // The lost connection is dropped: calls now wait for the attempt, not fail on it.
        *self.current.write().expect("not poisoned") = None;
        let me = self.me.clone();
        runtime.spawn(async move {
            let mut delay = Duration::from_millis(10);
            loop {
                // Stop when every handle is gone.
                let Some(state) = me.upgrade() else { return };
                match state.open().await {
                    Ok(conn) => {
                        *state.current.write().expect("not poisoned") = Some(conn);
                        state.down.store(false, Ordering::Release);
                        state.reconnecting.store(false, Ordering::Release);
                        state.attempted.notify_waiters();
                        tracing::debug!("reconnected to Redis");
                        return;
                    }
                    Err(e) => {
                        state.down.store(true, Ordering::Release);
                        state.attempted.notify_waiters();
                        tracing::debug!(error = %e, ?delay, "Redis reconnect failed");
                    }
                }
                drop(state);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        });
    }
}
