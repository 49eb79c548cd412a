//! A minimal blocking RESP client, enough to probe a server that is starting up.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends one command and returns the reply as text: simple strings and bulk strings as their
/// content, errors as `Err`.
pub(crate) fn command(addr: SocketAddr, args: &[&str]) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(out.as_bytes())?;

    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(reply) = parse(&buf)? {
            return Ok(reply);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `Ok(None)` while the reply is incomplete.
fn parse(buf: &[u8]) -> io::Result<Option<String>> {
    Ok(parse_at(buf, 0)?.map(|(text, _)| text))
}

/// Parses one reply starting at `at`; returns its text (array items joined by newlines) and
/// where the next reply starts.
fn parse_at(buf: &[u8], at: usize) -> io::Result<Option<(String, usize)>> {
    let Some(rel_end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line_end = at + rel_end;
    let line = String::from_utf8_lossy(&buf[at + 1..line_end]).into_owned();
    let next = line_end + 2;
    let len = |line: &str| -> io::Result<i64> {
        line.parse()
            .map_err(|_| io::Error::other(format!("bad length {line:?}")))
    };
    match buf[at] {
        b'+' | b':' => Ok(Some((line, next))),
        b'-' => Err(io::Error::other(line)),
        b'$' => {
            let n = len(&line)?;
            if n < 0 {
                return Ok(Some((String::new(), next)));
            }
            let end = next + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((
                String::from_utf8_lossy(&buf[next..end]).into_owned(),
                end + 2,
            )))
        }
        b'*' => {
            let n = len(&line)?.max(0);
            let mut items = Vec::new();
            let mut pos = next;
            for _ in 0..n {
                match parse_at(buf, pos)? {
                    Some((item, after)) => {
                        items.push(item);
                        pos = after;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((items.join("\n"), pos)))
        }
        _ => Err(io::Error::other("unexpected reply type")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_replies() {
        assert_eq!(parse(b"+PONG\r\n").unwrap().as_deref(), Some("PONG"));
        assert_eq!(parse(b"+PO").unwrap(), None);
        assert_eq!(parse(b"$3\r\nabc\r\n").unwrap().as_deref(), Some("abc"));
        assert_eq!(parse(b"$3\r\nab").unwrap(), None);
        assert!(parse(b"-ERR nope\r\n").is_err());
        assert_eq!(
            parse(b"*2\r\n:1\r\n$2\r\nab\r\n").unwrap().as_deref(),
            Some("1\nab")
        );
        assert_eq!(parse(b"*2\r\n:1\r\n$2\r\na").unwrap(), None);
    }
}
