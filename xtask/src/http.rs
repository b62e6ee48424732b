//! A tiny HTTP/1.1 client over `std::net::TcpStream`: one request per connection
//! (`Connection: close`), enough to drive the local server without an HTTP crate.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Send one request to `addr` (`host:port`) and return the status code and body.
pub fn http_request(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let socket = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolving {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&socket, TIMEOUT)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    // Timeouts so a hung server fails the command instead of blocking it forever.
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));

    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending {method} {path}: {e}"))?;

    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the response to {method} {path}: {e}"))?;
    parse_response(&raw)
}

/// Split a raw HTTP/1.1 response into status and body (decoding chunked bodies).
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("response has no header terminator")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let payload = &raw[split + 4..];

    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line `{status_line}`"))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked {
        decode_chunked(payload)?
    } else {
        payload.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_line = String::from_utf8_lossy(&data[..line_end]);
        // Chunk extensions (";name=value") may follow the size.
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size `{size_hex}`"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = data.get(..size).ok_or("truncated chunk")?;
        body.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("truncated chunk terminator")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_response() {
        let raw = b"HTTP/1.1 201 Created\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        assert_eq!(parse_response(raw), Ok((201, "{\"ok\":true}".to_string())));
    }

    #[test]
    fn decodes_a_chunked_response() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw), Ok((200, "Wikipedia".to_string())));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"nonsense").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn talks_to_a_real_socket() {
        use std::net::TcpListener;
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            return; // no loopback networking in this sandbox; the parser tests cover the rest
        };
        let Ok(addr) = listener.local_addr() else {
            return;
        };
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().ok()?;
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).ok()?;
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .ok()?;
            Some(request)
        });
        let response = http_request("POST", &addr.to_string(), "/x", &[("A", "b")], Some("{}"));
        assert_eq!(response, Ok((200, "ok".to_string())));
        let request = server.join().ok().flatten().unwrap_or_default();
        assert!(request.starts_with("POST /x HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("Connection: close\r\n"));
        assert!(request.contains("A: b\r\n"));
        assert!(request.ends_with("\r\n\r\n{}"));
    }
}
