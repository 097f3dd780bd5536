//! Secrets of apps whose executors read them from a file (`spark.authenticate.secret.executor.file`,
//! falling back to `spark.authenticate.secret.file`), when `agent.auth.pods.secretFiles read`
//! allows it. Spark puts no `_SPARK_AUTH_SECRET` in such pods (auth.md §1); the file comes from a
//! Kubernetes Secret the user mounted (`spark.kubernetes.executor.secrets.<name>=<dir>`, or a pod
//! template). This module owns two things:
//!
//! * [`resolve`] (pure): which Secret and key hold the file, read off the executor container's
//!   volume mounts and the pod's volumes, the way the kubelet lays them out. Anything it cannot
//!   tell for certain (a `subPathExpr`, `..` in the path, a volume that is not a Secret, a
//!   projected volume with other sources) is refused with the reason, never guessed.
//! * [`reads`]: GETs that Secret in the pod's namespace (needs `get secrets`; off by default) and
//!   hands the bytes back to the [`SecretSource`], which derives the app's secret exactly as
//!   Spark's `secretKeyFromFile` does and offers it to the keyring like an env secret.
//!
//! What it must not do: log, count or return the Secret's bytes anywhere. The fetched object is
//! reduced to the one key at once; every value in it is zeroed before it is dropped.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, Pod, Secret, Volume};
use kube::Api;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zeroize::{Zeroize, Zeroizing};

use super::app_secrets::{PodClaim, SecretSource};
use crate::auth::Keyring;

/// The Kubernetes Secret key behind an executor's secret file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecretKeyRef {
    /// The Secret's name, in the pod's namespace.
    pub name: String,
    /// The key within its `data`.
    pub key: String,
}

impl std::fmt::Display for SecretKeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} key {}", self.name, self.key)
    }
}

/// Finds the Secret key an executor pod's file `path` is mounted from, or says why it cannot.
///
/// The container is the executor's own (the one whose env carries `SPARK_APPLICATION_ID`). The
/// mount is the deepest `mountPath` that holds `path` (a deeper mount hides what is under it in
/// a shallower one). Inside a `secret:` volume, the file is `<key>` when the volume has no
/// `items`, else the `path` of the item that maps a key there; with `subPath`, the mount shows
/// that part of the volume. A projected volume is followed only when all its sources are
/// Secrets and exactly one of them can put a file at that path.
pub fn resolve(pod: &Pod, path: &Path, app_container: &str) -> Result<SecretKeyRef, String> {
    let shown = path.display();
    let path = normal(path).ok_or_else(|| format!("the secret file {shown} is not a plain absolute path"))?;
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    let container = spec
        .containers
        .iter()
        .find(|c| c.name == app_container)
        .ok_or("the executor container is not in the pod's spec")?;
    let (mount_name, inside) = mount_holding(container, &path)
        .ok_or_else(|| format!("no volume mount of the executor container holds {shown}"))??;
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount_name)
        .ok_or_else(|| format!("the volume {mount_name} mounted at {shown} is not in the pod's spec"))?;
    let inside = inside.to_str().ok_or("the secret file's path is not UTF-8")?.to_string();
    if inside.is_empty() {
        return Err(format!("{shown} is the mount point of volume {mount_name}, not a file in it"));
    }
    in_volume(volume, &inside).map_err(|why| format!("{shown} is in volume {mount_name}, which {why}"))
}

/// The path without `.` and repeated `/`; None if it is relative or climbs with `..`.
fn normal(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return None;
    }
    for component in components {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// The deepest mount of `container` that holds `path`: its volume name and the path inside the
/// volume (subPath applied). Some(Err) for a mount this cannot follow.
#[allow(clippy::type_complexity)]
fn mount_holding(container: &Container, path: &Path) -> Option<Result<(String, PathBuf), String>> {
    let mut best: Option<(usize, &k8s_openapi::api::core::v1::VolumeMount, PathBuf)> = None;
    for mount in container.volume_mounts.iter().flatten() {
        let Some(at) = normal(Path::new(&mount.mount_path)) else { continue };
        let Ok(rest) = path.strip_prefix(&at) else { continue };
        let depth = at.components().count();
        if best.as_ref().is_none_or(|(d, _, _)| depth > *d) {
            best = Some((depth, mount, rest.to_path_buf()));
        }
    }
    let (_, mount, rest) = best?;
    if mount.sub_path_expr.as_deref().is_some_and(|e| !e.is_empty()) {
        return Some(Err(format!("the volume mount {} uses subPathExpr, which is not followed", mount.name)));
    }
    let inside = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
        None => rest,
        Some(sub) => match normal(&Path::new("/").join(sub)) {
            Some(sub) => sub.strip_prefix("/").unwrap_or(&sub).join(rest),
            None => return Some(Err(format!("the volume mount {} has a subPath with `..`", mount.name))),
        },
    };
    let inside = if inside.as_os_str().is_empty() { inside } else { inside.components().collect() };
    Some(Ok((mount.name.clone(), inside)))
}

/// The Secret key a `secret:` (or all-Secret projected) volume puts at `inside`.
fn in_volume(volume: &Volume, inside: &str) -> Result<SecretKeyRef, String> {
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().filter(|n| !n.is_empty()).ok_or("names no Secret (no secretName)")?;
        let key = key_at(secret.items.as_deref(), inside).ok_or_else(|| no_key(inside))?;
        return Ok(SecretKeyRef { name, key });
    }
    let Some(projected) = &volume.projected else {
        return Err("is not a secret volume".into());
    };
    let mut found = Vec::new();
    for source in projected.sources.iter().flatten() {
        let Some(secret) = &source.secret else {
            return Err("is a projected volume with sources other than Secrets, which is not followed".into());
        };
        if let Some(key) = key_at(secret.items.as_deref(), inside) {
            found.push(SecretKeyRef { name: secret.name.clone(), key });
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(no_key(inside)),
        _ => Err(format!("is a projected volume in which several Secrets may put {inside}; not followed")),
    }
}

/// With `items`, the key mapped to `inside`; without, `inside` itself if it can be a key (the
/// kubelet puts every key at the top of the volume, and keys hold no `/`).
fn key_at(items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>, inside: &str) -> Option<String> {
    match items {
        Some(items) => items
            .iter()
            .find(|item| normal(&Path::new("/").join(&item.path)).is_some_and(|p| p == Path::new("/").join(inside)))
            .map(|item| item.key.clone()),
        None => (!inside.contains('/')).then(|| inside.to_string()),
    }
}

fn no_key(inside: &str) -> String {
    format!("puts no key at {inside}")
}

/// One Secret to read for a claim whose owner check passed.
#[derive(Debug)]
pub struct SecretRead {
    /// The executor pod (namespace/name) the claim came from.
    pub pod: String,
    pub claim: PodClaim,
    pub secret: SecretKeyRef,
}

/// Why a Secret could not be read, without any of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The API answered with an error status (404 not found, 403 forbidden, ...).
    Api { code: u16, reason: String },
    /// The Secret exists but has no such key (or no data).
    NoKey,
    /// The API server could not be reached, or its answer could not be read. The underlying
    /// error is not shown: a decoding error may quote part of the answer, which is the Secret.
    Unreachable,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Api { code: 403, .. } => f.write_str(
                "403 forbidden: the agent's service account may not get secrets (deploy/components/secret-files)",
            ),
            ReadError::Api { code, reason } => write!(f, "the API server answered {code} {reason}"),
            ReadError::NoKey => f.write_str("the Secret has no such key"),
            ReadError::Unreachable => f.write_str("the API server could not be reached or its answer not read"),
        }
    }
}

/// How many reads may wait for [`reads`]; more are dropped and retried on a later pod event.
pub const READ_QUEUE: usize = 16;

/// The channel the [`SecretSource`] sends reads on, and the receiver for [`reads`].
pub fn channel() -> (mpsc::Sender<SecretRead>, mpsc::Receiver<SecretRead>) {
    mpsc::channel(READ_QUEUE)
}

/// Reads each requested Secret in the pod's namespace, one at a time, and hands the outcome to
/// the source. Runs until `shutdown`.
pub async fn reads(
    client: kube::Client,
    keyring: Arc<Keyring>,
    source: Arc<Mutex<SecretSource>>,
    mut requests: mpsc::Receiver<SecretRead>,
    shutdown: CancellationToken,
) {
    loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            read = requests.recv() => match read { Some(read) => read, None => return },
        };
        let api = Api::<Secret>::namespaced(client.clone(), &read.claim.namespace);
        let outcome = match api.get(&read.secret.name).await {
            Ok(secret) => take_key(secret, &read.secret.key),
            Err(kube::Error::Api(status)) => Err(ReadError::Api { code: status.code, reason: status.reason.clone() }),
            Err(_) => Err(ReadError::Unreachable),
        };
        crate::sync::lock(&source).secret_read(read, outcome, &keyring);
    }
}

/// The bytes of one key of a fetched Secret; every value is zeroed as the object drops.
pub fn take_key(mut secret: Secret, key: &str) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let mut data = secret.data.take().unwrap_or_default();
    let found = data.get_mut(key).map(|value| Zeroizing::new(std::mem::take(&mut value.0)));
    for value in data.values_mut() {
        value.0.zeroize();
    }
    found.ok_or(ReadError::NoKey)
}

#[cfg(test)]
#[path = "secret_files_tests.rs"]
mod tests;
