//! ElevenLabs-style webhook signatures, so `cargo xtask run` can print a working curl.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::Result;

/// Hex HMAC-SHA256 of `"<t>.<body>"` keyed with the webhook secret: the `v0` part of
/// `ElevenLabs-Signature: t=<t>,v0=<hex>`.
pub fn signature(secret: &str, t: u64, body: &str) -> Result<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|e| format!("HMAC key rejected: {e}"))?;
    mac.update(format!("{t}.{body}").as_bytes());
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// The full header value.
pub fn signature_header(secret: &str, t: u64, body: &str) -> Result<String> {
    Ok(format!("t={t},v0={}", signature(secret, t, body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"type":"post_call_transcription","event_timestamp":1739537297,"data":{"agent_id":"xyz","conversation_id":"abc"}}"#;

    #[test]
    fn matches_the_known_vector() {
        assert_eq!(
            signature("wsec_test_secret", 1_739_537_297, BODY)
                .ok()
                .as_deref(),
            Some("56c255208ac31944e833c7edacb091a1d845f075a6a781576269c7ff188bc125")
        );
    }

    #[test]
    fn header_has_t_and_v0() {
        assert_eq!(
            signature_header("wsec_test_secret", 1_739_537_297, BODY)
                .ok()
                .as_deref(),
            Some(
                "t=1739537297,v0=56c255208ac31944e833c7edacb091a1d845f075a6a781576269c7ff188bc125"
            )
        );
    }
}
