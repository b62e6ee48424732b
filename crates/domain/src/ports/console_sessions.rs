//! Sessions of the dispatcher console, kept where every instance sees them.

use time::OffsetDateTime;

use super::RepositoryError;

/// The SHA-256 of a session id: what the store keeps instead of the id itself, so that a
/// leaked row logs nobody in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionHash(pub [u8; 32]);

/// Server-side console sessions.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait::async_trait]
pub trait ConsoleSessions: Send + Sync + 'static {
    /// Stores a new session valid until `expires_at`.
    ///
    /// # Errors
    /// [`RepositoryError::Conflict`] when the hash exists (a collision of 256 random bits:
    /// never in practice).
    async fn create(
        &self,
        hash: &SessionHash,
        expires_at: OffsetDateTime,
    ) -> Result<(), RepositoryError>;

    /// Whether a session with this hash exists and expires after `now`.
    async fn is_active(
        &self,
        hash: &SessionHash,
        now: OffsetDateTime,
    ) -> Result<bool, RepositoryError>;

    /// Ends the session (nothing happens for an unknown hash).
    async fn delete(&self, hash: &SessionHash) -> Result<(), RepositoryError>;

    /// Removes the sessions that expired at or before `now`; returns how many.
    async fn purge_expired(&self, now: OffsetDateTime) -> Result<u64, RepositoryError>;
}
