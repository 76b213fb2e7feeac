//! Where task records live.
//!
//! [`MemoryStore`] holds every live record of this manager, keyed by id, and
//! keeps a count per status that transitions update as they happen.

mod memory;

pub(crate) use memory::MemoryStore;
