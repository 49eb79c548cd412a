//! Throwaway TLS certificates and a TLS-only `redis-server`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::server::{RedisServer, StartError, scratch_dir, skip_or_panic};

/// A throwaway certificate authority and a server certificate it signed for `127.0.0.1`,
/// made with the `openssl` command in a scratch directory that is removed on drop.
#[derive(Debug)]
pub struct TlsFiles {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), StartError> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StartError::MissingBinary("openssl"),
            _ => StartError::Failed(format!("openssl: {e}")),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(StartError::Failed(format!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl TlsFiles {
    /// Generates a CA (`ca.crt`) and a server key and certificate (`server.key`,
    /// `server.crt`, subject alternative name `IP:127.0.0.1`), valid for a day.
    pub fn generate() -> Result<TlsFiles, StartError> {
        let dir = scratch_dir("tls")?;
        fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-subj",
                "/CN=floodwall-testkit-ca",
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "1",
                "-extfile",
                "san.ext",
            ],
        ];
        let files = TlsFiles { dir };
        for args in steps {
            openssl(&files.dir, args)?;
        }
        Ok(files)
    }

    /// The CA certificate (PEM) that clients trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The server certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    /// The server key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// Starts a server that speaks only TLS on its port (`--port 0 --tls-port <port>`), with
    /// the given certificate and key, not asking clients for certificates. Its
    /// [`tls_url`](Self::tls_url) is `rediss://127.0.0.1:<port>`.
    pub fn start_tls(files: &TlsFiles) -> Result<RedisServer, StartError> {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let (cert, key, ca) = (path(files.cert()), path(files.key()), path(files.ca()));
        RedisServer::start_with(&[
            "--port",
            "0",
            "--tls-port",
            "{port}",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ])
    }

    /// Certificates and a TLS server for a test, with the skip rule of
    /// [`RedisServer::start_or_skip`] (a missing `openssl` is skipped like a missing
    /// `redis-server`).
    pub fn start_tls_or_skip(test: &str) -> Option<(TlsFiles, RedisServer)> {
        let files = skip_or_panic(test, TlsFiles::generate())?;
        let server = skip_or_panic(test, RedisServer::start_tls(&files))?;
        Some((files, server))
    }

    /// `rediss://127.0.0.1:<port>`.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port())
    }
}
