//! Per-key locks within this process.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Serialises work on the same key within this process: requests on one
/// upload session, copies of one blob into one store. (The blob store also
/// locks a session file, because a dropped request releases this lock before
/// its writer thread has drained.)
pub(super) struct KeyedLocks<K>(Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>);

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    pub(super) async fn lock(&self, id: &K) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // Drop locks nobody holds, so the map stays as small as the live sessions.
            map.retain(|_, l| Arc::strong_count(l) > 1);
            map.entry(id.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// The key's lock if nobody holds it now.
    pub(super) fn try_lock(&self, id: &K) -> Option<OwnedMutexGuard<()>> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            map.retain(|_, l| Arc::strong_count(l) > 1);
            map.entry(id.clone()).or_default().clone()
        };
        lock.try_lock_owned().ok()
    }
}
