//! Task ids and tags.
//!
//! A [`TaskId`] is a UUIDv7: its leading 48 bits are the creation time in
//! milliseconds, the next 12 the sub-millisecond fraction, the rest random. Ids
//! made later sort later, so an index keyed by them grows at its end. Making one
//! takes no lock and no system call beyond reading the clock.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identity of one enqueued task, unique across processes and restarts.
///
/// ```
/// use taskflow_worker::TaskId;
/// let a = TaskId::new();
/// let b = TaskId::new();
/// assert_ne!(a, b);
/// assert_eq!(a.to_string().parse::<TaskId>().unwrap(), a);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self::at(SystemTime::now())
    }

    /// A new id for something created at `time` (a clock read the caller
    /// needs anyway).
    pub fn at(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::at_unix_nanos(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    /// As [`at`](Self::at), for a time given as nanoseconds since the Unix
    /// epoch (the form taskflow's records keep times in).
    #[doc(hidden)]
    pub fn at_unix_nanos(nanos: u64) -> Self {
        let millis = (nanos / 1_000_000) & ((1 << 48) - 1);
        // RFC 9562 §6.2 method 3: spend rand_a on extra clock precision so ids
        // from one thread within a millisecond still sort by time.
        let fraction = ((nanos % 1_000_000) << 12) / 1_000_000;
        let random = next_random() & ((1 << 62) - 1);
        let bits = (u128::from(millis) << 80)
            | (0x7 << 76)
            | (u128::from(fraction) << 64)
            | (0b10 << 62)
            | u128::from(random);
        TaskId(Uuid::from_u128(bits))
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Wraps an existing UUID (one read back from storage, say).
    pub fn from_uuid(uuid: Uuid) -> Self {
        TaskId(uuid)
    }

    /// The id's 16 bytes, big-endian, so byte order is time order.
    pub fn to_bytes(&self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// The id whose [`to_bytes`](Self::to_bytes) these are.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        TaskId(Uuid::from_bytes(bytes))
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0.hyphenated())
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(TaskId)
    }
}

/// splitmix64 over a per-thread seed: fast, lock-free, and plenty for the random
/// half of an id (uniqueness, not secrecy, is what it buys).
fn next_random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish());
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// Key–value labels attached to a task at enqueue time, in insertion order.
///
/// Cloning is cheap: the pairs are shared.
///
/// ```
/// use taskflow_worker::Tags;
/// let tags = Tags::from_pairs([("tenant", "acme"), ("source", "api")]);
/// assert_eq!(tags.get("tenant"), Some("acme"));
/// assert_eq!(tags.get("missing"), None);
/// assert_eq!(tags.len(), 2);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags(Option<Arc<[(String, String)]>>);

impl Tags {
    /// Tags from pairs; a later pair replaces an earlier one with the same key.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        let mut out: Vec<(String, String)> = Vec::new();
        for (key, value) in pairs {
            let (key, value) = (key.into(), value.into());
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => out.push((key, value)),
            }
        }
        Tags::from_vec(out)
    }

    pub(crate) fn from_vec(pairs: Vec<(String, String)>) -> Self {
        if pairs.is_empty() {
            Tags(None)
        } else {
            Tags(Some(pairs.into()))
        }
    }

    /// The value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0
            .iter()
            .flat_map(|pairs| pairs.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many pairs there are.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |pairs| pairs.len())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Tags {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Tags::from_pairs(iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_and_sort_by_creation() {
        let ids: Vec<TaskId> = (0..1000).map(|_| TaskId::new()).collect();
        assert!(ids.iter().all(|id| id.as_uuid().get_version_num() == 7));
        let first = ids[0].as_uuid().get_timestamp().map(|t| t.to_unix());
        let last = ids[999].as_uuid().get_timestamp().map(|t| t.to_unix());
        assert!(first <= last);
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn later_tag_replaces_earlier() {
        let tags = Tags::from_pairs([("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(tags.iter().collect::<Vec<_>>(), [("a", "3"), ("b", "2")]);
    }
}
