//! Errors the HTTP layer produces itself, rendered with the SPEC envelope.
//!
//! Two places produce them:
//! - actix-http's HTTP/1 dispatcher answers a request it cannot parse (malformed request
//!   line or path: 400), a head larger than its buffer or with too many headers (431) and
//!   a head that does not arrive within the client request timeout (408) on its own, with
//!   an empty body and no hook. [`EnvelopeIo`] wraps each connection and replaces exactly
//!   those responses — a complete head with status ≥ 400, `content-length: 0`, no
//!   `content-type`, written on its own — with the same status and an envelope body. The
//!   dispatcher closes the connection after them, so nothing follows on the wire.
//! - actix-web's own error responses (extractor errors and the like) reach
//!   [`envelope_framework_errors`], which gives any error response that is not JSON the
//!   envelope.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, web};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::errors::ErrorEnvelope;

/// A connection whose empty-bodied error answers from the dispatcher get the envelope.
pub struct EnvelopeIo<T> {
    io: T,
    /// A replacement response still to be written (already reported as written).
    pending: Option<web::Bytes>,
}

impl<T> EnvelopeIo<T> {
    pub fn new(io: T) -> Self {
        Self { io, pending: None }
    }
}

impl<T: AsyncWrite + Unpin> EnvelopeIo<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(bytes) = self.pending.as_mut() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, bytes))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = bytes.split_to(n);
            if bytes.is_empty() {
                self.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for EnvelopeIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for EnvelopeIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(replacement) = enveloped(buf) {
            self.pending = Some(replacement);
            // Start writing now; whatever is left goes out with the next write or flush.
            if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The envelope for a status the HTTP layer answered on its own.
fn envelope_text(status: StatusCode) -> (&'static str, &'static str) {
    match status {
        StatusCode::BAD_REQUEST => (
            "Bad request",
            "The request line, a header or the path could not be parsed",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "Request timeout",
            "The request head did not arrive within the client request timeout",
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "Request header fields too large",
            "Send fewer or smaller headers",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("Request body too large", "The body is too large"),
        s if s.is_server_error() => (
            "Internal server error",
            "The request could not be processed",
        ),
        _ => ("Request refused", "The request could not be processed"),
    }
}

fn envelope_json(status: StatusCode) -> Option<Vec<u8>> {
    let (message, details) = envelope_text(status);
    serde_json::to_vec(&ErrorEnvelope {
        status: "error",
        message,
        details,
    })
    .ok()
}

/// The bytes to send instead of `written`, when `written` is exactly one empty-bodied
/// error response head.
fn enveloped(written: &[u8]) -> Option<web::Bytes> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(written) {
        Ok(httparse::Status::Complete(len)) if len == written.len() => {}
        _ => return None,
    }
    let status = StatusCode::from_u16(response.code?).ok()?;
    let has = |name: &header::HeaderName| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name.as_str()))
            .map(|h| h.value)
    };
    if status.as_u16() < 400
        || has(&header::CONTENT_LENGTH) != Some(b"0".as_slice())
        || has(&header::CONTENT_TYPE).is_some()
    {
        return None;
    }
    let body = envelope_json(status)?;
    tracing::debug!(
        status = status.as_u16(),
        "request refused by the HTTP layer"
    );
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len()
    );
    let mut bytes = web::BytesMut::with_capacity(head.len() + body.len());
    bytes.extend_from_slice(head.as_bytes());
    bytes.extend_from_slice(&body);
    Some(bytes.freeze())
}

/// For `ErrorHandlers::default_handler`: an error response that is not JSON (produced by
/// actix-web rather than by `ApiError`) gets the envelope, keeping its status and headers.
pub fn envelope_framework_errors<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // The console's error pages are HTML and stay so.
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (req, old) = res.into_parts();
    let mut new = HttpResponse::build(status);
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.append_header((name.clone(), value.clone()));
        }
    }
    let new = new
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ))
        .body(envelope_json(status).unwrap_or_default());
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, new).map_into_right_body(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_bodied_error_head_gets_the_envelope() {
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
        let replaced = enveloped(head).expect("replaced");
        let text = String::from_utf8_lossy(&replaced);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        let body = text.split("\r\n\r\n").nth(1).expect("body");
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(json["status"], "error");
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
    }

    #[test]
    fn other_writes_pass_unchanged() {
        for written in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 400 Bad Req",
            b"{\"status\":\"error\"}",
        ] {
            assert!(enveloped(written).is_none(), "{written:?}");
        }
    }
}
