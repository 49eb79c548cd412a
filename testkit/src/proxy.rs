//! A fault-injecting loopback TCP proxy.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Faults {
    latency: Duration,
    blackhole: bool,
    refuse: bool,
    /// Bumped by `reset_all`: connections opened under an older epoch are reset.
    epoch: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicUsize,
}

/// A TCP proxy on a loopback port in front of `upstream`, with faults switched at run time.
///
/// - [`set_latency`](Self::set_latency): every forwarded chunk waits this long, both ways;
/// - [`blackhole`](Self::blackhole): connections are accepted but nothing is forwarded, either
///   way, until [`heal`](Self::heal) (bytes already read are held, not dropped, so the stream
///   stays well-formed);
/// - [`reset_all`](Self::reset_all): every open connection is closed with a TCP RST;
/// - [`refuse_new`](Self::refuse_new): new connections are reset as soon as accepted;
/// - [`heal`](Self::heal): clears latency, blackhole and refusal.
///
/// Runs on the Tokio runtime it was started on; stops when dropped, resetting its connections.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    faults: watch::Sender<Faults>,
    counters: Arc<Counters>,
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (faults, rx) = watch::channel(Faults::default());
        let counters = Arc::new(Counters::default());
        let accept_task = tokio::spawn(accept_loop(listener, upstream, rx, counters.clone()));
        Ok(FaultProxy {
            addr,
            faults,
            counters,
            accept_task,
        })
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://<addr>`, for pointing a Redis client at the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Delays every forwarded chunk by `latency`, both directions.
    pub fn set_latency(&self, latency: Duration) {
        self.faults.send_modify(|f| f.latency = latency);
    }

    /// Stops forwarding on every connection, old and new, until [`heal`](Self::heal).
    pub fn blackhole(&self) {
        self.faults.send_modify(|f| f.blackhole = true);
    }

    /// Resets (TCP RST) every connection open now. New connections are served as configured.
    pub fn reset_all(&self) {
        self.faults.send_modify(|f| f.epoch += 1);
    }

    /// Resets new connections as soon as they are accepted, until [`heal`](Self::heal).
    pub fn refuse_new(&self) {
        self.faults.send_modify(|f| f.refuse = true);
    }

    /// Clears latency, blackhole and refusal.
    pub fn heal(&self) {
        self.faults.send_modify(|f| {
            f.latency = Duration::ZERO;
            f.blackhole = false;
            f.refuse = false;
        });
    }

    /// Connections accepted and forwarded so far (refused ones not counted).
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Acquire)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open any more (after [`reset_all`](Self::reset_all),
    /// which the proxy's connection tasks carry out on their own), at most `timeout`;
    /// returns whether that happened.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        let poll = async {
            while self.open_connections() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(timeout, poll).await.is_ok()
    }

    /// Waits until at least `n` connections have been accepted, at most `timeout`; returns
    /// whether they were.
    pub async fn wait_accepted(&self, n: u64, timeout: Duration) -> bool {
        let poll = async {
            while self.accepted() < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(timeout, poll).await.is_ok()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Dropping `faults` ends every connection task (their `changed()` fails).
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: watch::Receiver<Faults>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if faults.borrow().refuse {
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        counters.accepted.fetch_add(1, Ordering::AcqRel);
        counters.open.fetch_add(1, Ordering::AcqRel);
        let faults = faults.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            serve(client, upstream, faults).await;
            counters.open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, mut faults: watch::Receiver<Faults>) {
    let epoch = faults.borrow_and_update().epoch;
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let reset = {
        let (client_r, client_w) = client.split();
        let (server_r, server_w) = server.split();
        tokio::select! {
            _ = pump(client_r, server_w, faults.clone()) => false,
            _ = pump(server_r, client_w, faults.clone()) => false,
            _ = wait_reset(&mut faults, epoch) => true,
        }
    };
    if reset {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

async fn wait_reset(faults: &mut watch::Receiver<Faults>, epoch: u64) {
    loop {
        if faults.changed().await.is_err() {
            return;
        }
        if faults.borrow_and_update().epoch != epoch {
            return;
        }
    }
}

/// Copies `from` to `to`, applying the current faults to each chunk. Returns on EOF or error.
async fn pump<R, W>(mut from: R, mut to: W, mut faults: watch::Receiver<Faults>)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let latency = loop {
            let f = *faults.borrow_and_update();
            if !f.blackhole {
                break f.latency;
            }
            if faults.changed().await.is_err() {
                return;
            }
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
