//! Lock access that carries on after a panic elsewhere poisoned the lock.
//!
//! Every lock in the agent guards state whose critical sections are single map or field
//! updates, so a panic while one was held cannot leave it half-updated. Refusing to serve (or
//! panicking in turn) because of a poisoned lock would turn one bug into an outage for every
//! client; these take the state as it is instead.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

pub fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
