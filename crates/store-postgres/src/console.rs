//! What the dispatcher console needs of PostgreSQL: its sessions (`console_sessions`) and
//! the change feed behind its live pages (LISTEN on the channel of migration 0012, and
//! the notifier that announces stored turns on it).

mod changes;
mod sessions;

pub use changes::{CallChange, ChangeFeed, ChangeNotifier, channel_name};
pub use sessions::PgConsoleSessions;
