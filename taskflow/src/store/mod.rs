//! Where task records live.
//!
//! [`MemoryStore`] holds the live records of this manager and a window of
//! finished ones. [`SqliteStore`], when configured, keeps every task in a
//! file that survives restarts and crashes, written by one thread in groups.

mod memory;
mod sqlite;

pub(crate) use memory::{MemoryStore, sort_newest_first};
pub(crate) use sqlite::{Claimed, CorruptRow, Recovered, SqliteStore, StoreConfig, StoredRow};
