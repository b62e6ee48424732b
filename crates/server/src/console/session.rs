//! Console sessions: a random id in an `HttpOnly` cookie, its SHA-256 in PostgreSQL, and
//! a form token derived from the id for every state-changing form.

use std::future::Future;
use std::pin::Pin;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use calls_domain::ports::SessionHash;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::ConsoleError;
use crate::state::AppState;

pub const COOKIE_NAME: &str = "console_session";
/// The hidden field of every state-changing form.
pub const FORM_TOKEN_FIELD: &str = "form_token";

/// A session id as the cookie carries it: 32 random bytes, base64url.
pub struct SessionId(String);

impl SessionId {
    /// # Errors
    /// When the operating system has no randomness to give (then nobody can log in).
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SessionHash {
        SessionHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// Keyed by the session id, which only the browser holding the cookie knows, so a
    /// page of another site can neither read nor compute it.
    pub fn form_token(&self) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(b"calls-server console form token");
        hex::encode(mac.finalize().into_bytes())
    }

    pub fn cookie(&self, ttl: std::time::Duration, secure: bool) -> Cookie<'static> {
        Cookie::build(COOKIE_NAME, self.0.clone())
            .path("/console")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(secure)
            .max_age(time::Duration::seconds(
                i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            ))
            .finish()
    }
}

/// Tells the browser to forget the cookie.
pub fn removal_cookie(secure: bool) -> Cookie<'static> {
    let mut cookie = Cookie::build(COOKIE_NAME, "")
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .finish();
    cookie.make_removal();
    cookie
}

/// A request from a logged-in browser. Without a valid session the handler is not run
/// and the browser is sent to the login page (303).
pub struct ConsoleSession {
    id: SessionId,
}

impl ConsoleSession {
    pub fn hash(&self) -> SessionHash {
        self.id.hash()
    }

    pub fn form_token(&self) -> String {
        self.id.form_token()
    }

    /// Whether a submitted form carries this session's token (constant time).
    pub fn accepts_form_token(&self, submitted: Option<&str>) -> bool {
        submitted.is_some_and(|t| crate::auth::constant_time_eq(t, &self.form_token()))
    }
}

impl FromRequest for ConsoleSession {
    type Error = ConsoleError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ConsoleError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let cookie = req.cookie(COOKIE_NAME).map(|c| c.value().to_owned());
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let state = state.ok_or(ConsoleError::Internal)?;
            // A value that cannot be one of ours is not looked up.
            let id = cookie
                .filter(|v| v.len() == 43 && URL_SAFE_NO_PAD.decode(v).is_ok())
                .map(SessionId)
                .ok_or(ConsoleError::NeedLogin)?;
            let sessions = state.console.sessions()?;
            if sessions
                .is_active(&id.hash(), OffsetDateTime::now_utc())
                .await?
            {
                Ok(Self { id })
            } else {
                Err(ConsoleError::NeedLogin)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_43_character_base64url_strings() {
        let a = SessionId::generate().expect("random");
        let b = SessionId::generate().expect("random");
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str().len(), 43);
        assert!(URL_SAFE_NO_PAD.decode(a.as_str()).is_ok());
    }

    #[test]
    fn the_hash_and_the_form_token_depend_on_the_id_and_differ_from_it() {
        let a = SessionId("a".repeat(43));
        let b = SessionId("b".repeat(43));
        assert_ne!(a.hash(), b.hash());
        assert_ne!(a.form_token(), b.form_token());
        assert_eq!(a.form_token(), SessionId("a".repeat(43)).form_token());
        assert_ne!(a.form_token(), hex::encode(a.hash().0));
        assert!(!a.form_token().contains(a.as_str()));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_on_request() {
        let id = SessionId("a".repeat(43));
        let ttl = std::time::Duration::from_secs(60);
        let plain = id.cookie(ttl, false).to_string();
        assert!(plain.contains("HttpOnly"), "{plain}");
        assert!(plain.contains("SameSite=Strict"), "{plain}");
        assert!(plain.contains("Max-Age=60"), "{plain}");
        assert!(!plain.contains("Secure"), "{plain}");
        assert!(id.cookie(ttl, true).to_string().contains("Secure"));
    }
}
