//! Secret hygiene: no credential in any form the redis crate accepts — a URL's userinfo,
//! `?pass=` / `?password=` on `redis+unix://` and `unix://` URLs, a Sentinel master's password
//! — appears in any `Debug` output, error or log line, and credentials the server refuses are
//! a configuration error. Against servers these tests start themselves.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use floodwall_core::StoreError;
use floodwall_core::redis::{RedisConnection, StoreOptions};
use floodwall_testkit::RedisServer;

/// Collects every tracing event's fields as text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = self.0.lock().unwrap();
        event.record(&mut Fields(&mut text));
        text.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The password in a URL appears in no `Debug` output and no log line.
#[tokio::test(flavor = "current_thread")]
async fn debug_output_and_the_connect_log_line_contain_no_password() {
    let Some(server) =
        RedisServer::start_or_skip("debug_output_and_the_connect_log_line_contain_no_password")
    else {
        return;
    };
    server
        .command(&["CONFIG", "SET", "requirepass", "s3cret-pw"])
        .unwrap();
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}", server.port());
    let connector = RedisConnection::standalone(url.clone());
    let debug = format!("{connector:?}");
    println!("{debug}");
    assert!(!debug.contains("s3cret-pw"), "{debug}");
    assert!(debug.contains(":***@127.0.0.1"), "{debug}");

    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let conn = connector.connect().await.unwrap();
    let sentinel_debug = format!(
        "{:?}",
        RedisConnection::sentinel("m", [url.clone()]).master_auth(None, "s3cret-pw")
    );
    let conn_debug = format!("{conn:?}");
    let options_debug = format!("{:?}", StoreOptions::new(conn.clone()));
    let logged = capture.0.lock().unwrap().clone();
    println!("log: {logged}");
    assert!(
        logged.contains("connected to Redis"),
        "the connect line was logged: {logged}"
    );
    for text in [&logged, &conn_debug, &options_debug, &sentinel_debug] {
        assert!(!text.contains("s3cret-pw"), "{text}");
    }
}

/// Credentials the server refuses are a configuration error, with a message that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_config_error() {
    let Some(server) = RedisServer::start_or_skip("a_wrong_password_is_a_config_error") else {
        return;
    };
    server
        .command(&["CONFIG", "SET", "requirepass", "right-one"])
        .unwrap();
    let err =
        RedisConnection::standalone(format!("redis://:wrong-one@127.0.0.1:{}", server.port()))
            .connect()
            .await
            .unwrap_err();
    println!("wrong password: {err}");
    assert!(matches!(err, StoreError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("credentials"), "{err}");
    assert!(!err.to_string().contains("wrong-one"));
    // No password at all, against a server that needs one: also a configuration error.
    let err = RedisConnection::standalone(server.url())
        .connect()
        .await
        .unwrap_err();
    println!("no password: {err}");
    assert!(matches!(err, StoreError::Config(_)), "{err:?}");
}

/// The password of every URL form, on a server that requires it: the connector's, the
/// connection's and the store options' `Debug`, the connect log line, and the errors of a
/// wrong password and of an unreachable server hold no credential text.
#[tokio::test(flavor = "current_thread")]
async fn no_credential_text_in_any_output_for_every_url_form() {
    let socket = std::env::temp_dir().join(format!("fw-cred-{}.sock", std::process::id()));
    let socket_s = socket.to_str().unwrap().to_owned();
    if RedisServer::start_or_skip("no_credential_text_in_any_output_for_every_url_form").is_none() {
        return;
    }
    // A server on a port and a Unix socket; its password is set once it answers.
    let server = RedisServer::start_with(&["--unixsocket", &socket_s]).unwrap();
    server
        .command(&["CONFIG", "SET", "requirepass", "pw-S3cret"])
        .unwrap();
    let port = server.port();
    let forms = [
        format!("redis://:pw-S3cret@127.0.0.1:{port}"),
        format!("redis://default:pw-S3cret@127.0.0.1:{port}/0"),
        format!("redis://:pw%2DS3cret@127.0.0.1:{port}"),
        format!("redis+unix://{socket_s}?pass=pw-S3cret"),
        format!("unix://{socket_s}?db=0&pass=pw-S3cret"),
        format!("redis+unix://{socket_s}?user=default&pass=pw-S3cret"),
    ];
    let mut checked = 0;
    for url in &forms {
        let capture = Capture::default();
        let _guard = tracing::subscriber::set_default(capture.clone());
        let connector = RedisConnection::standalone(url.clone());
        let mut texts = vec![format!("{connector:?}")];
        match connector.connect().await {
            Ok(conn) => {
                texts.push(format!("{conn:?}"));
                texts.push(format!("{:?}", StoreOptions::new(conn)));
            }
            Err(e) => texts.push(format!("{e} / {e:?}")),
        }
        // A wrong password in the same place, and the same URL with nothing listening.
        let wrong = url
            .replace("pw-S3cret", "pw-Wr0ng")
            .replace("pw%2DS3cret", "pw-Wr0ng");
        let err = RedisConnection::standalone(wrong)
            .connect()
            .await
            .unwrap_err();
        texts.push(format!("{err} / {err:?}"));
        let gone = url
            .replace(&port.to_string(), "1")
            .replace(&socket_s, "/nonexistent/fw.sock");
        let err = RedisConnection::standalone(gone)
            .connect()
            .await
            .unwrap_err();
        texts.push(format!("{err} / {err:?}"));
        texts.push(capture.0.lock().unwrap().clone());
        for text in &texts {
            for secret in ["pw-S3cret", "pw%2DS3cret", "pw-Wr0ng"] {
                assert!(!text.contains(secret), "{url}: {text}");
            }
        }
        println!(
            "{}: {} texts, no credential; e.g. {}",
            forms.iter().position(|f| f == url).unwrap(),
            texts.len(),
            texts[0]
        );
        checked += 1;
    }
    let _ = std::fs::remove_file(&socket);
    println!("{checked} URL forms checked");
    assert_eq!(checked, forms.len(), "every form was tried");
}
