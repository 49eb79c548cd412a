//! FaultProxy in front of a loopback echo server.

use std::time::Duration;

use floodwall_testkit::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await?;
    Ok(got)
}

#[tokio::test]
async fn forwards_adds_latency_blackholes_and_heals() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"hello").await.unwrap(), b"hello");
    assert_eq!(proxy.accepted(), 1);

    proxy.set_latency(Duration::from_millis(40));
    let started = Instant::now();
    assert_eq!(roundtrip(&mut s, b"slow").await.unwrap(), b"slow");
    // Both directions are delayed.
    assert!(
        started.elapsed() >= Duration::from_millis(80),
        "{:?}",
        started.elapsed()
    );

    proxy.heal();
    proxy.blackhole();
    let held = timeout(Duration::from_millis(150), roundtrip(&mut s, b"held")).await;
    assert!(held.is_err(), "nothing is forwarded while blackholed");
    proxy.heal();
    // The bytes were held, not dropped: they arrive after healing.
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"held");
}

#[tokio::test]
async fn reset_all_and_refuse_new() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut s, b"x").await.unwrap(), b"x");

    proxy.reset_all();
    let mut buf = [0u8; 1];
    let read = timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "connection closed by reset: {read:?}"
    );

    proxy.refuse_new();
    let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
    let r = timeout(Duration::from_secs(2), roundtrip(&mut refused, b"y"))
        .await
        .unwrap();
    assert!(r.is_err(), "refused connections are reset");
    assert_eq!(proxy.accepted(), 1, "refused connections are not counted");

    proxy.heal();
    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(roundtrip(&mut fresh, b"z").await.unwrap(), b"z");
    assert!(proxy.wait_accepted(2, Duration::from_secs(1)).await);
}
