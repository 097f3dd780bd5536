//! Executor registrations: which (app, executor) wrote its shuffle files where. This module owns
//! the policy of what may be registered (local dirs confined to the roots) and the lookups the
//! data path makes. It does no socket I/O.

mod roots;

pub use roots::{canonicalize_lenient, Roots};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::protocol::{java_error, ExecutorShuffleInfo};
use crate::store::ExecutorDirs;

/// A registered executor: what it sent, and its dirs ready for path hashing.
#[derive(Debug)]
pub struct Executor {
    pub app_id: String,
    pub exec_id: String,
    pub info: ExecutorShuffleInfo,
    pub dirs: ExecutorDirs,
}

/// A driver registered with RegisterDriver (the 2.2 Kubernetes fork and Mesos clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driver {
    pub app_id: String,
    pub heartbeat_timeout_ms: i64,
}

/// Why a registration was refused. The text is what the client is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A local dir entry was empty.
    #[error("java.lang.IllegalArgumentException: localDirs entries must be non-null and non-empty")]
    EmptyDir,
    /// No local dirs were given.
    #[error("java.lang.IllegalArgumentException: localDirs must not be empty")]
    NoDirs,
    /// A local dir resolves outside every configured root.
    #[error(
        "java.lang.IllegalArgumentException: localDirs entry is not under any of the service's local directories: {0}"
    )]
    OutsideRoots(String),
    /// subDirsPerLocalDir was zero or negative.
    #[error("java.lang.IllegalArgumentException: subDirsPerLocalDir must be positive, got {0}")]
    BadSubDirs(i32),
}

type Apps = HashMap<String, HashMap<String, Arc<Executor>>>;

/// All registrations. Lookups take a read lock for a hash probe; the chunk path does not come
/// here at all (a stream holds its executor).
#[derive(Debug)]
pub struct Registry {
    roots: Roots,
    apps: RwLock<Apps>,
    drivers: RwLock<HashMap<String, Driver>>,
}

impl Registry {
    pub fn new(roots: Roots) -> Registry {
        Registry { roots, apps: RwLock::default(), drivers: RwLock::default() }
    }

    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    /// Validates and builds a registration without storing it.
    pub fn validate(&self, app_id: &str, exec_id: &str, info: ExecutorShuffleInfo) -> Result<Executor, RegistryError> {
        if info.local_dirs.is_empty() {
            return Err(RegistryError::NoDirs);
        }
        let mut canonical = Vec::with_capacity(info.local_dirs.len());
        for dir in &info.local_dirs {
            if dir.is_empty() {
                return Err(RegistryError::EmptyDir);
            }
            canonical.push(self.roots.confine(dir).ok_or_else(|| RegistryError::OutsideRoots(dir.clone()))?);
        }
        let dirs = ExecutorDirs::new(info.local_dirs.clone(), info.sub_dirs_per_local_dir, canonical)
            .map_err(|_| RegistryError::BadSubDirs(info.sub_dirs_per_local_dir))?;
        Ok(Executor { app_id: app_id.to_string(), exec_id: exec_id.to_string(), info, dirs })
    }

    /// Stores a validated registration, replacing any earlier one for the same executor.
    pub fn insert(&self, executor: Executor) {
        let mut apps = write(&self.apps);
        apps.entry(executor.app_id.clone()).or_default().insert(executor.exec_id.clone(), Arc::new(executor));
    }

    pub fn executor(&self, app_id: &str, exec_id: &str) -> Option<Arc<Executor>> {
        read(&self.apps).get(app_id)?.get(exec_id).cloned()
    }

    /// The executor, or the text the JVM service sends when it is not registered.
    pub fn require(&self, app_id: &str, exec_id: &str) -> Result<Arc<Executor>, String> {
        self.executor(app_id, exec_id).ok_or_else(|| java_error::executor_not_registered(app_id, exec_id))
    }

    pub fn register_driver(&self, driver: Driver) {
        write(&self.drivers).insert(driver.app_id.clone(), driver);
    }

    pub fn driver(&self, app_id: &str) -> Option<Driver> {
        read(&self.drivers).get(app_id).cloned()
    }

    /// Number of (app, executor) registrations.
    pub fn executor_count(&self) -> usize {
        read(&self.apps).values().map(HashMap::len).sum()
    }

    pub fn app_count(&self) -> usize {
        read(&self.apps).len()
    }
}

// A panic while holding these locks cannot leave a map half-updated (every write is a single
// insert or remove), so a poisoned lock is still safe to use.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
