//! What the resilience tests share.

/// A current-thread runtime with timers, its clock paused: time moves only when every task
/// waits, straight to the next timer, so a test of durations takes no real time.
pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}
