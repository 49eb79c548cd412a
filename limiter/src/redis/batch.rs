//! Natural batching: decisions that wait for the same Redis node while a call for that node
//! is in flight go out together, as one script call.
//!
//! Each node (a standalone or Sentinel server is one; on Cluster, each master, as the
//! connection's slot table knows it) has at most [`IN_FLIGHT`] limiter calls in flight
//! ([`IN_FLIGHT_NATIVE`] while the server takes the native command, [`IN_FLIGHT_PER_MASTER`]
//! on Cluster). A decision that finds the node idle is sent at once, alone: no timer, no
//! added wait. One that finds a call in flight joins the node's queue. The queue goes as one
//! call (up to the size cap) when a call returns, or at once when it holds [`FULL_BATCH`]
//! decisions ([`FULL_BATCH_NATIVE`] with the native command) and the node has room for
//! another call; the call decides its decisions in arrival order (see `limit.lua`). A call
//! that returns hands its verdicts out first and lets the callers it woke run before it
//! takes the queue ([`GATHER_YIELDS`]): those that decide again ride the next call, not the
//! one after. Under load, batches grow with
//! the load; Redis runs one script per batch instead of one per decision. Full batches sent
//! while another call is under way keep Redis busy while the client reads one batch's
//! verdicts and gathers the next, and each call carries a batch's worth of decisions.
//!
//! One node per call, whatever the slots: on Cluster, a batch whose keys are in several slots
//! is run as the script flagged `allow-cross-slot-keys` (Redis 7), its keys passed as
//! arguments and the call routed by its first key. A decision whose key that node no longer
//! serves (its slot moved since the slot table was read) wrote nothing; it is sent again
//! alone and follows the redirect. A node that cannot compile the flagged script (a server
//! before Redis 7) is remembered: from then on a node's batch goes as one call per slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use floodwall_core::StoreError;
use floodwall_core::redis::slot::key_slot;
use floodwall_core::redis::{StorePath, Topology};
use tokio::sync::oneshot;

use super::native::Native;
use super::single::{is_redirect, send_script, send_single};
use super::units::{Unit, one_slot, segments};
use super::verdict::Verdict;
use wire::{cannot_compile, encode, in_order, is_elsewhere, replicate};

mod wire;

struct Waiting {
    item: Unit,
    reply: oneshot::Sender<Verdict>,
    /// The decision's call bound: it is answered by then — with a timeout if its batch has
    /// not answered, and without being sent if the bound passed while it waited.
    deadline: tokio::time::Instant,
}

#[derive(Default)]
struct Group {
    /// Calls for this node in flight.
    in_flight: usize,
    queue: Vec<Waiting>,
}

/// Calls one server may have in flight at once; beyond the first, each carries a full batch
/// (`benches/limiter_redis.rs`, 64 callers, 10k keys, the script: 12.3 decisions per call,
/// 1.75x the floor's throughput and a p50 of 147 µs; with at most 2 calls, each sent when one
/// returned, 19.4 decisions per call, 1.47x and 219 µs, at the same Redis CPU per decision).
const IN_FLIGHT: usize = 4;
/// Decisions that make a full batch, sent while another call is in flight (the script: 16
/// gave 1.75x the floor's throughput on 10k keys, 32 gave 1.53x).
const FULL_BATCH: usize = 16;
/// The same while the server takes the native command, whose cost to Redis is almost all
/// per call (waking, reading the call, writing the reply): fewer, fuller calls. Same bench
/// with these limits set by hand for the runs (this release), native command, Redis CPU per decision against the floor's on 10k keys / 10 hot keys:
/// 4 calls and full batches of 16, 0.30-0.32x / 0.22-0.23x at 11 decisions per call; 2 and
/// 32, 0.25-0.29x / 0.19-0.21x at 21 (four runs); 3 and 32, 0.25-0.27x / 0.21-0.22x at 17
/// (three runs), with 1.70-1.95x and 1.84-2.08x the floor's throughput; 1 call, 0.25x /
/// 0.18x at 34 but 1.46x / 1.87x the throughput.
const IN_FLIGHT_NATIVE: usize = 3;
/// Decisions that make a full batch while the server takes the native command.
const FULL_BATCH_NATIVE: usize = 32;
/// The same for each Cluster master: the client's calls are spread over the masters, which
/// keeps every master busy with one call each, and batches larger (3 masters, 64 callers:
/// 10.5 decisions per call with 1, 6.1 with 2; with 2 and full batches of 8, 7.2 per call
/// and more Redis CPU per decision, 0.94x the floor's against 0.84x).
const IN_FLIGHT_PER_MASTER: usize = 1;

/// Yields a node's drain makes, at most, for the callers its call answered to come back
/// (`Batcher::gather`). `benches/limiter_redis.rs`, 64 callers, runs alternating without and
/// with it (this release, the yields set by hand for the runs): standalone, native command, 10k keys, 17 decisions per call and
/// 0.26-0.28x the floor's Redis CPU, 2.30-2.54x its throughput, without; 31 per call,
/// 0.21-0.22x and 2.65-2.83x with 3. 3-master Cluster, 3 shards: 10 per call, 0.35-0.36x,
/// without; 15 with 1 yield (0.27-0.30x), 16.5 with 3 (0.23-0.26x). Every p50 fell.
const GATHER_YIELDS: usize = 3;

/// Every node's batching state: on one server, its one group; on Cluster, each master's,
/// by address (`host:port`), a master absent being idle.
#[derive(Default)]
struct Groups {
    server: Group,
    nodes: HashMap<Arc<str>, Group>,
}

impl Groups {
    /// The group of `node` ([`SERVER`] on one server), made if absent.
    fn entry(&mut self, node: &Arc<str>) -> &mut Group {
        match &**node {
            SERVER => &mut self.server,
            _ => self.nodes.entry(node.clone()).or_default(),
        }
    }

    fn get_mut(&mut self, node: &str) -> Option<&mut Group> {
        match node {
            SERVER => Some(&mut self.server),
            _ => self.nodes.get_mut(node),
        }
    }

    /// Forgets `node`'s group when it has no call in flight and nobody waits.
    fn remove_if_idle(&mut self, node: &str) {
        if node != SERVER
            && self
                .nodes
                .get(node)
                .is_some_and(|g| g.in_flight == 0 && g.queue.is_empty())
        {
            self.nodes.remove(node);
        }
    }
}

/// The one group's name on one server (a Cluster node's is its `host:port`, never this).
const SERVER: &str = "server";

/// The batching state of one store: which nodes have a call in flight, and who waits.
pub(super) struct Batcher {
    path: StorePath,
    max_batch: usize,
    /// Nodes with a call in flight, and who waits for each.
    groups: Mutex<Groups>,
    /// On one server (standalone, Sentinel) every key is this one group; `None` on Cluster.
    single_group: Option<Arc<str>>,
    /// Decisions that make a full batch: one goes while another call is in flight (with the
    /// script, and with the native command).
    full: usize,
    full_native: usize,
    /// A Cluster node could not compile the script flagged for several slots (a server
    /// before Redis 7): from then on a node's batch goes as one call per slot.
    cross_refused: AtomicBool,
    /// The native command, where the server has it.
    native: Arc<Native>,
}

impl Batcher {
    pub(super) fn new(path: StorePath, max_batch: usize, native: Arc<Native>) -> Arc<Batcher> {
        let single_group =
            (path.connection().topology() != Topology::Cluster).then(|| Arc::from(SERVER));
        Arc::new(Batcher {
            path,
            max_batch: max_batch.max(1),
            groups: Mutex::new(Groups::default()),
            full: FULL_BATCH.min(max_batch.max(1)),
            full_native: FULL_BATCH_NATIVE.min(max_batch.max(1)),
            single_group,
            cross_refused: AtomicBool::new(false),
            native,
        })
    }

    /// Calls a node may have in flight, and the decisions that make a full batch: fewer,
    /// fuller calls while the server takes the native command; one call per Cluster master.
    fn limits(&self) -> (usize, usize) {
        match (&self.single_group, self.native.worth_trying()) {
            (None, _) => (IN_FLIGHT_PER_MASTER, self.full),
            (Some(_), true) => (IN_FLIGHT_NATIVE, self.full_native),
            (Some(_), false) => (IN_FLIGHT, self.full),
        }
    }

    /// The node that serves `item`'s keys, as the connection's slot table knows it (a
    /// Cluster); the one group otherwise.
    fn group_of(&self, item: &Unit) -> Arc<str> {
        match &self.single_group {
            Some(group) => group.clone(),
            None => self
                .path
                .connection()
                .node_for(item.first_key().as_str().as_bytes()),
        }
    }

    /// Decides `item`: at once when its node is idle, else with the next batch for its node.
    /// A waiting decision gives up at `deadline` (its call bound).
    pub(super) async fn submit(
        self: &Arc<Self>,
        item: Unit,
        deadline: tokio::time::Instant,
    ) -> Verdict {
        let group = self.group_of(&item);
        let mut item = Some(item);
        let mut full = Vec::new();
        let waiting = {
            let mut groups = self.groups.lock().expect("not poisoned");
            let g = groups.entry(&group);
            match g.in_flight == 0 {
                true => {
                    g.in_flight += 1;
                    None
                }
                false => {
                    let (tx, rx) = oneshot::channel();
                    g.queue.push(Waiting {
                        item: item.take().expect("not yet queued"),
                        reply: tx,
                        deadline,
                    });
                    // A full batch goes at once while the node has room for another call.
                    let (most, full_at) = self.limits();
                    if g.queue.len() >= full_at && g.in_flight < most {
                        g.in_flight += 1;
                        full = std::mem::replace(&mut g.queue, Vec::with_capacity(full_at));
                    }
                    Some(rx)
                }
            }
        };
        if !full.is_empty() {
            tokio::spawn(Place::taken(self, &group).drain(full));
        }
        let Some(rx) = waiting else {
            // The node was idle: this decision is the call in flight. The guard hands the
            // node to the queue (or frees it) however this future ends, dropped included.
            let _turn = Turn {
                batcher: self,
                group,
            };
            return send_single(
                &self.path,
                &self.native,
                &item.expect("not queued"),
                deadline,
            )
            .await;
        };
        // No timer of its own: the decision is answered by its deadline all the same. Every
        // call in flight ends by the deadline of a decision that came before this one; then
        // this one is answered with a timeout if its bound has passed (`next_batch`), or sent
        // in a batch that answers each decision by its own deadline (`call_within`).
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::unavailable(
                "the rate-limit batch this decision waited for was abandoned",
            ))
        })
    }

    /// One script call for `items`, all of one node, ending by `deadline`; one reply per
    /// item. Keys of one slot are the script's keys; keys of several (a Cluster node's
    /// batch) are passed as arguments to the script run with `allow-cross-slot-keys`, routed
    /// by the first key.
    async fn call(
        &self,
        items: &[Unit],
        deadline: tokio::time::Instant,
    ) -> Result<Vec<::redis::Value>, StoreError> {
        if let [item] = items {
            return Ok(vec![
                send_single(&self.path, &self.native, item, deadline).await?,
            ]);
        }
        if self.native.worth_trying()
            && let Some(segments) = segments(items)
        {
            return self.call_native(items, segments, deadline).await;
        }
        self.call_script(items, deadline).await
    }

    /// `items` (GCRA decisions that consume, grouped as `segments`) decided with one native
    /// command; the script's, when the server refuses it.
    async fn call_native(
        &self,
        items: &[Unit],
        segments: Vec<super::units::Segment<'_>>,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<::redis::Value>, StoreError> {
        let Some(verdicts) = self.native.decide(&self.path, &segments, deadline).await else {
            return self.call_script(items, deadline).await;
        };
        let order = segments
            .iter()
            .flat_map(|s| s.units.iter().copied())
            .collect();
        in_order(verdicts?, Some(order), items.len())
    }

    /// [`call`](Self::call) with the script.
    async fn call_script<U: std::borrow::Borrow<Unit>>(
        &self,
        items: &[U],
        deadline: tokio::time::Instant,
    ) -> Result<Vec<::redis::Value>, StoreError> {
        if let [item] = items {
            let item = item.borrow();
            return Ok(vec![send_script(&self.path, item, deadline, false).await?]);
        }
        let cross = self.single_group.is_none() && !one_slot(items);
        if cross && self.cross_refused.load(Ordering::Relaxed) {
            return self.call_per_slot(items, deadline).await;
        }
        let (call, order) = encode(items, cross);
        let replies: Vec<::redis::Value> = match self.path.invoke_until(call, deadline).await {
            Err(e) if cross && cannot_compile(&e) => {
                if !self.cross_refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "a Redis Cluster node refused the rate-limit script for several slots \
                         (Redis 7 script flags); batches go one call per slot"
                    );
                }
                return self.call_per_slot(items, deadline).await;
            }
            replies => replies?,
        };
        in_order(replies, order, items.len())
    }

    /// A node's batch as one call per slot, sent concurrently; the replies in `items`'
    /// order. Any call's failure fails the batch, as one call's would.
    async fn call_per_slot<U: std::borrow::Borrow<Unit>>(
        &self,
        items: &[U],
        deadline: tokio::time::Instant,
    ) -> Result<Vec<::redis::Value>, StoreError> {
        let mut slots: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, unit) in items.iter().enumerate() {
            let slot = key_slot(unit.borrow().first_key().as_str().as_bytes());
            match slots.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, at)) => at.push(i),
                None => slots.push((slot, vec![i])),
            }
        }
        let calls = slots.iter().map(|(_, at)| async move {
            if let [i] = at[..] {
                let item = items[i].borrow();
                return Ok(vec![send_script(&self.path, item, deadline, false).await?]);
            }
            let slot: Vec<&Unit> = at.iter().map(|&i| items[i].borrow()).collect();
            let (call, order) = encode(&slot, false);
            let replies: Vec<::redis::Value> = self.path.invoke_until(call, deadline).await?;
            in_order(replies, order, at.len())
        });
        let mut out = vec![::redis::Value::Nil; items.len()];
        for ((_, at), replies) in slots.iter().zip(futures::future::join_all(calls).await) {
            for (&i, reply) in at.iter().zip(replies?) {
                out[i] = reply;
            }
        }
        Ok(out)
    }

    /// The node's call returned: takes the next batch, or marks the node idle. Decisions
    /// whose callers gave up are dropped, and those whose deadline has passed are answered
    /// with a timeout; neither is sent.
    fn next_batch(&self, group: &str) -> Vec<Waiting> {
        let mut groups = self.groups.lock().expect("not poisoned");
        let Some(g) = groups.get_mut(group) else {
            return Vec::new();
        };
        let room = g.queue.len().min(self.max_batch);
        let now = tokio::time::Instant::now();
        let expired: Vec<Waiting> = g
            .queue
            .extract_if(.., |w| w.reply.is_closed() || w.deadline <= now)
            .collect();
        if !expired.is_empty() {
            let after = self.path.call_timeout();
            for w in expired {
                let _ = w.reply.send(Err(StoreError::Timeout { after }));
            }
        }
        if g.queue.is_empty() {
            g.in_flight -= 1;
            groups.remove_if_idle(group);
            return Vec::new();
        }
        if g.queue.len() <= self.max_batch {
            // The queue keeps room for as many as it just held: it refills at about that pace.
            std::mem::replace(&mut g.queue, Vec::with_capacity(room))
        } else {
            g.queue.drain(..self.max_batch).collect()
        }
    }

    /// Sends the node's queued decisions batch after batch until the queue is empty.
    async fn drain(&self, group: &Arc<str>, mut batch: Vec<Waiting>) {
        while !batch.is_empty() {
            let mut deadlines = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            let items: Vec<Unit> = batch
                .into_iter()
                .map(|w| {
                    deadlines.push(w.deadline);
                    replies.push(Some(w.reply));
                    w.item
                })
                .collect();
            match self.call_within(&items, &deadlines, &mut replies).await {
                Ok(verdicts) => {
                    let answers = items.iter().zip(&deadlines).zip(replies).zip(verdicts);
                    for (((item, deadline), reply), verdict) in answers {
                        // A decision answered already (its deadline passed) is skipped.
                        let Some(reply) = reply else { continue };
                        let verdict = if is_redirect(&verdict) || is_elsewhere(&verdict) {
                            // The slot is moving: this decision ran into a key that has left
                            // (it wrote nothing). Alone, its redirect is the call's own reply,
                            // which the Cluster client follows.
                            send_single(&self.path, &self.native, item, *deadline).await
                        } else {
                            Ok(verdict)
                        };
                        let _ = reply.send(verdict);
                    }
                }
                Err(e) => {
                    for reply in replies.into_iter().flatten() {
                        let _ = reply.send(Err(replicate(&e)));
                    }
                }
            }
            self.gather(group).await;
            batch = self.next_batch(group);
        }
    }

    /// Lets the callers a call just answered come back before the node's next batch goes:
    /// yields to the runtime, at most [`GATHER_YIELDS`] times, while the node's queue grows
    /// and is short of a batch. A woken caller runs on the runtime's queue behind this task;
    /// one that decides again joins the queue, so the next call carries its decision too,
    /// instead of the call after. No timer and no wait beyond the tasks already ready to run:
    /// a yield that brought nobody ends it.
    async fn gather(&self, group: &str) {
        let mut queued = self.queued(group);
        for _ in 0..GATHER_YIELDS {
            if queued >= self.max_batch {
                return;
            }
            tokio::task::yield_now().await;
            let now = self.queued(group);
            if now == queued {
                return;
            }
            queued = now;
        }
    }

    /// Decisions waiting for `group`.
    fn queued(&self, group: &str) -> usize {
        let mut groups = self.groups.lock().expect("not poisoned");
        groups.get_mut(group).map_or(0, |g| g.queue.len())
    }

    /// The batch's call, bounded by its latest decision's deadline; while it waits, each
    /// decision whose own deadline comes is answered then with a timeout (its reply taken
    /// from `replies`). One timer for the batch, set to the earliest deadline still waiting
    /// and only when that is a timer tick or more before the latest.
    async fn call_within(
        &self,
        items: &[Unit],
        deadlines: &[tokio::time::Instant],
        replies: &mut [Option<oneshot::Sender<Verdict>>],
    ) -> Result<Vec<::redis::Value>, StoreError> {
        const TICK: std::time::Duration = std::time::Duration::from_millis(1);
        let latest = deadlines
            .iter()
            .copied()
            .max()
            .expect("a batch is not empty");
        let call = self.call(items, latest);
        let mut call = std::pin::pin!(call);
        loop {
            let earliest = deadlines
                .iter()
                .zip(replies.iter())
                .filter(|(_, r)| r.is_some())
                .map(|(d, _)| *d)
                .min()
                .filter(|&d| d + TICK < latest);
            let Some(at) = earliest else {
                return call.await;
            };
            let timer = std::pin::pin!(tokio::time::sleep_until(at));
            match futures::future::select(call.as_mut(), timer).await {
                futures::future::Either::Left((result, _)) => return result,
                futures::future::Either::Right(((), _)) => {
                    let now = tokio::time::Instant::now();
                    let after = self.path.call_timeout();
                    for (d, reply) in deadlines.iter().zip(replies.iter_mut()) {
                        if *d <= now
                            && let Some(reply) = reply.take()
                        {
                            let _ = reply.send(Err(StoreError::Timeout { after }));
                        }
                    }
                }
            }
        }
    }
}

/// One of a node's places for a call in flight, held by the task that drains the node's
/// queue. Dropped before the drain ended (its task was dropped: its runtime shut down, even
/// before it first ran), it gives the place back, and when no other call is in flight,
/// answers the decisions waiting for the node with an error: nothing else would send them.
struct Place {
    batcher: Arc<Batcher>,
    group: Arc<str>,
    /// The drain ended: its last `next_batch` gave the place back.
    ended: bool,
}

impl Place {
    /// The place just counted in `group`'s calls in flight.
    fn taken(batcher: &Arc<Batcher>, group: &Arc<str>) -> Place {
        Place {
            batcher: batcher.clone(),
            group: group.clone(),
            ended: false,
        }
    }

    /// Sends `batch`, then the node's queue batch after batch until it is empty (the place
    /// given back by the last `next_batch`).
    async fn drain(mut self, batch: Vec<Waiting>) {
        self.batcher.drain(&self.group, batch).await;
        self.ended = true;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let waiting = {
            let mut groups = self.batcher.groups.lock().expect("not poisoned");
            let Some(g) = groups.get_mut(&self.group) else {
                return;
            };
            g.in_flight -= 1;
            let waiting = match g.in_flight {
                0 => std::mem::take(&mut g.queue),
                _ => Vec::new(),
            };
            groups.remove_if_idle(&self.group);
            waiting
        };
        for w in waiting {
            let _ = w.reply.send(Err(StoreError::unavailable(
                "the task sending this Redis node's rate-limit batches ended before its call did",
            )));
        }
    }
}

/// The node's turn, held by the decision sent alone; handed on when it ends.
struct Turn<'a> {
    batcher: &'a Arc<Batcher>,
    group: Arc<str>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let batch = self.batcher.next_batch(&self.group);
        if batch.is_empty() {
            return;
        }
        let place = Place::taken(self.batcher, &self.group);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(place.drain(batch));
            }
            Err(_) => {
                // No runtime to send from: the place is given back, and the batch's
                // decisions fail.
                drop(place);
                for w in batch {
                    let _ = w.reply.send(Err(StoreError::unavailable(
                        "no runtime left to send rate-limit decisions from",
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
