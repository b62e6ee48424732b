//! What the dispatcher console needs of PostgreSQL: its sessions (`console_sessions`) and
//! the change feed behind its live pages (LISTEN on the channel of migration 0012).

mod changes;
mod sessions;

pub use changes::{CallChange, ChangeFeed, channel_name};
pub use sessions::PgConsoleSessions;
